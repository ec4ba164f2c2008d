"""The parts of a compressed index that are not the index: the memory-mapped rescoring tier (:class:`VectorStore`),
the slot -> docid table (:class:`DocidTable`, frozen as one blob after a load, thawed by the first write), and FAISS
helpers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rankstack._optional import require
from rankstack.errors import IndexCorrupt

logger = logging.getLogger(__name__)

__all__ = ["VectorStore", "DocidTable", "faiss_base", "no_polysemous"]


class VectorStore:
    """Full-precision vectors by slot: a read-only memmap on disk plus rows added since the last save."""

    def __init__(self, dim: int, dtype: str):
        self.dim = dim
        self.dtype = dtype
        self.disk: np.ndarray | None = None  # [n_disk, dim] memmap
        self.disk_scale: np.ndarray | None = None  # int8 only: per-row scale
        self._pending_rows: dict[int, np.ndarray] = {}

    def put(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Hold new rows in memory until the next save, already rounded to the on-disk precision so that
        rescoring gives the same scores before and after saving."""
        for s, v in zip(slots.tolist(), self.round_trip(np.asarray(vectors, np.float32))):
            self._pending_rows[s] = v

    def quantize(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.dtype == "int8":
            sc = (np.abs(v).max(axis=1) / 127.0).astype(np.float32)
            sc[sc == 0] = 1.0
            return np.clip(np.rint(v / sc[:, None]), -127, 127).astype(np.int8), sc
        dt = np.float16 if self.dtype == "float16" else np.float32
        return v.astype(dt), np.ones(v.shape[0], np.float32)

    def round_trip(self, v: np.ndarray) -> np.ndarray:
        q, sc = self.quantize(v)
        out = np.asarray(q, np.float32)
        if self.dtype == "int8":
            out *= sc[:, None]
        return out

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """float32 ``[len(slots), dim]``; reads the memmap in ascending slot order to keep disk access sequential."""
        out = np.empty((slots.size, self.dim), np.float32)
        n_disk = 0 if self.disk is None else self.disk.shape[0]
        order = np.argsort(slots, kind="stable")
        s_sorted = slots[order]
        on_disk = s_sorted < n_disk
        if on_disk.any():
            rows = np.asarray(self.disk[s_sorted[on_disk]], np.float32)
            if self.dtype == "int8":
                rows *= self.disk_scale[s_sorted[on_disk]][:, None]
            out[order[on_disk]] = rows
        for i in np.flatnonzero(~on_disk):
            out[order[i]] = self._pending_rows[int(s_sorted[i])]
        return out

    def write(self, path: Path, n_slots: int) -> None:
        """Write all slots ``[0, n_slots)`` to ``path/vectors.npy`` (+ ``scales.npy`` for int8)."""
        dt = {"float32": np.float32, "float16": np.float16, "int8": np.int8}[self.dtype]
        arr = np.lib.format.open_memmap(path / "vectors.npy", mode="w+", dtype=dt, shape=(n_slots, self.dim))
        scales = np.ones(n_slots, np.float32)
        step = 65536
        for s0 in range(0, n_slots, step):
            slots = np.arange(s0, min(n_slots, s0 + step))
            v = self.gather_or_zero(slots)
            if self.dtype == "int8" and self.disk is not None:  # re-quantizing dequantized rows must not drift
                keep = slots < self.disk.shape[0]
                arr[slots[keep]] = self.disk[slots[keep]]
                scales[slots[keep]] = self.disk_scale[slots[keep]]
                slots, v = slots[~keep], v[~keep]
            q, sc = self.quantize(v)
            arr[slots] = q
            scales[slots] = sc
        arr.flush()
        del arr
        if self.dtype == "int8":
            np.save(path / "scales.npy", scales)

    def storage_rows(self, n_slots: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Every slot ``[0, n_slots)`` in the storage precision (int8 rows come with their per-row scales): what a
        device copy of the tier holds. Unknown (removed) slots are zero."""
        dt = {"float32": np.float32, "float16": np.float16, "int8": np.int8}[self.dtype]
        out = np.zeros((n_slots, self.dim), dt)
        scales = np.ones(n_slots, np.float32)
        n_disk = 0 if self.disk is None else min(self.disk.shape[0], n_slots)
        if n_disk:
            out[:n_disk] = self.disk[:n_disk]
            if self.dtype == "int8":
                scales[:n_disk] = self.disk_scale[:n_disk]
        rest = np.arange(n_disk, n_slots)
        if rest.size:
            q, sc = self.quantize(self.gather_or_zero(rest))
            out[rest], scales[rest] = q, sc
        return out, scales if self.dtype == "int8" else None

    def gather_or_zero(self, slots: np.ndarray) -> np.ndarray:
        n_disk = 0 if self.disk is None else self.disk.shape[0]
        known = (slots < n_disk) | np.isin(slots, np.fromiter(self._pending_rows, np.int64, len(self._pending_rows)))
        out = np.zeros((slots.size, self.dim), np.float32)
        if known.any():
            out[known] = self.gather(slots[known])
        return out

    @classmethod
    def open(cls, path: Path, dim: int, dtype: str, n_slots: int) -> VectorStore:
        self = cls(dim, dtype)
        try:
            self.disk = np.load(path / "vectors.npy", mmap_mode="r")
            if dtype == "int8":
                self.disk_scale = np.load(path / "scales.npy")
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"{path}/vectors.npy (the rescoring tier) is missing or corrupt ({exc}); "
                               f"rebuild the index") from None
        if self.disk.shape != (n_slots, dim):
            raise IndexCorrupt(f"{path}/vectors.npy holds {self.disk.shape} but the index has {n_slots} slots of "
                               f"dimension {dim}; the files are inconsistent, rebuild the index")
        if dtype == "int8" and self.disk_scale.shape != (n_slots,):
            raise IndexCorrupt(f"{path}/scales.npy does not match vectors.npy; rebuild the index")
        return self


class DocidTable:
    """slot <-> docid. As loaded it is frozen: sorted int64 slots plus one UTF-8 blob with offsets (about 20 bytes
    per document and no Python object per document, which would cost ~200 bytes each). The first mutation or
    membership test builds the two dictionaries."""

    def __init__(self) -> None:
        self.slots = np.empty(0, np.int64)
        self.offsets = np.zeros(1, np.int64)
        self.blob = b""
        self.by_slot: dict[int, str] | None = {}
        self.by_docid: dict[str, int] | None = {}

    @classmethod
    def frozen(cls, slots: np.ndarray, offsets: np.ndarray, blob: bytes) -> DocidTable:
        self = cls()
        self.slots, self.offsets, self.blob = slots, offsets, blob
        self.by_slot = self.by_docid = None
        return self

    def _names(self, rows: np.ndarray) -> list[str]:
        off, blob = self.offsets, self.blob
        return [blob[off[i]:off[i + 1]].decode("utf-8") for i in rows.tolist()]

    def thaw(self) -> None:
        if self.by_slot is None:
            self.by_slot = dict(zip(self.slots.tolist(), self._names(np.arange(self.slots.size))))
            self.by_docid = {d: s for s, d in self.by_slot.items()}
            self.slots, self.offsets, self.blob = np.empty(0, np.int64), np.zeros(1, np.int64), b""

    def __len__(self) -> int:
        return self.slots.size if self.by_slot is None else len(self.by_slot)

    def __contains__(self, docid: str) -> bool:
        self.thaw()
        return docid in self.by_docid

    def slot_of(self, docid: str) -> int:
        self.thaw()
        return self.by_docid[docid]

    def add(self, slot: int, docid: str) -> None:
        self.thaw()
        self.by_slot[slot] = docid
        self.by_docid[docid] = slot

    def remove_slot(self, slot: int) -> None:
        self.thaw()
        del self.by_docid[self.by_slot.pop(slot)]

    def names(self, slots: np.ndarray) -> list[str]:
        if self.by_slot is not None:
            return [self.by_slot[int(s)] for s in slots.tolist()]
        return self._names(np.searchsorted(self.slots, slots))

    def sorted_items(self) -> tuple[np.ndarray, list[str]]:
        if self.by_slot is None:
            return self.slots, self._names(np.arange(self.slots.size))
        slots = np.array(sorted(self.by_slot), dtype=np.int64)
        return slots, [self.by_slot[s] for s in slots.tolist()]

    def pack(self) -> tuple[np.ndarray, np.ndarray, bytes]:
        if self.by_slot is None:
            return self.slots, self.offsets, self.blob
        slots, names = self.sorted_items()
        enc = [n.encode("utf-8") for n in names]
        offsets = np.zeros(len(enc) + 1, np.int64)
        np.cumsum([len(e) for e in enc], out=offsets[1:])
        return slots, offsets, b"".join(enc)

    def nbytes(self) -> int:
        return self.slots.nbytes + self.offsets.nbytes + len(self.blob)


def no_polysemous(index) -> None:
    """The factory's IndexPQ trains polysemous codes by default (90 s for 5k x 384 on 2 cores, 40x the PQ itself);
    RankStack never searches with polysemous filtering, so skip it."""
    inner = faiss_base(index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def faiss_base(index):
    """The codes-holding index beneath an IDMap / pre-transform wrapper."""
    faiss = require("faiss")
    index = faiss.downcast_index(index)
    while True:
        inner = getattr(index, "index", None)
        if inner is None:
            return index
        index = faiss.downcast_index(inner)
