"""Compressed dense indexes behind the :class:`~rankstack.index.base.VectorIndex` interface: FAISS IVF/HNSW/PQ/
OPQ/IVF-PQ/SQ8 and binary codes.

An :class:`IndexSpec` (``IndexSpec.parse("pq:m=48,rescore=float32")``) says what to build. Every kind supports
add/upsert/remove by docid, atomic save/load with consistency checks, and an optional second tier: full-precision
(float32, float16 or int8) vectors in a memory-mapped file, used to rescore ``k * rescore_multiplier`` candidates
from the compact codes exactly. Only the codes live in memory; the rescoring file is paged in on demand.

Internally each document has a *slot* (a stable int64 id that FAISS stores); the rescoring file is indexed by slot.
Removed slots are never reused, and their rows stay in the rescoring file until the index is rebuilt.

Search runs on FAISS (and numpy for multi-bit codes) for numpy queries. For torch tensors on a GPU (or any tensor
under ``TRITON_INTERPRET=1``), 1-bit Hamming codes and 8-bit PQ/OPQ codes are scanned by the Triton kernels of
:mod:`rankstack.kernels`, and the rescoring tier by the gather+dot kernel; the codes and the rescoring tier are then
copied to the device once and kept there until the index changes. The other kinds search on the CPU path.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack._optional import require
from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt
from rankstack.index.base import GrowingRows, IndexSpec, VectorIndex, as_matrix, drop_dead, read_params, sort_pairs
from rankstack.index.binary import ResidualBinaryCodec
from rankstack.records import TopK

logger = logging.getLogger(__name__)

__all__ = ["IndexSpec", "CompressedIndex", "KINDS"]

KINDS = ("ivf-flat", "hnsw", "pq", "opq-pq", "ivf-pq", "sq8", "binary")
KERNEL_KINDS = ("binary", "pq", "opq-pq")  # kinds with a GPU scan kernel (binary: 1-bit Hamming; PQ: 8-bit codes)


class _VectorStore:
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
    def open(cls, path: Path, dim: int, dtype: str, n_slots: int) -> _VectorStore:
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


class _DocidTable:
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
    def frozen(cls, slots: np.ndarray, offsets: np.ndarray, blob: bytes) -> _DocidTable:
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


class CompressedIndex(VectorIndex):
    """A compressed dense index over string docids; scores are inner products (higher is better)."""

    KIND = "dense-compressed"
    FORMAT_VERSION = 1

    def __init__(self, dim: int, spec: IndexSpec, *, meta: dict | None = None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise BadInput(f"dimension must be a positive integer, got {dim!r}")
        if spec.kind not in KINDS:
            raise BadInput(f"{spec.kind!r} is not a compressed index kind ({', '.join(KINDS)}); a flat index is "
                           f"rankstack.index.faiss_flat.DenseFlatIndex (rankstack.index.registry.new_vector_index "
                           f"picks the class)")
        if spec.kind in ("pq", "opq-pq", "ivf-pq") and dim % spec.m:
            raise BadInput(f"PQ with m={spec.m} needs a dimension divisible by m; {dim} is not")
        if spec.kind == "binary" and dim % 8:
            raise BadInput(f"binary codes need a dimension divisible by 8, got {dim}")
        self.dim = dim
        self.spec = spec
        self.meta = dict(meta or {})
        self._ids = _DocidTable()
        self._next_slot = 0
        self._faiss = None  # FAISS kinds: an index whose ids are slots
        self._tombstones: set[int] = set()  # removed slots still in the codes (FAISS's or binary), filtered at search
        self._codec: ResidualBinaryCodec | None = None
        # binary kinds: bit-planes, their scales and each row's slot, grown in place by writes
        self._codes = GrowingRows(np.empty((0, spec.bits, dim // 8), np.uint8), np.empty((0, spec.bits), np.float16),
                                  np.empty(0, np.int64))
        self._store = _VectorStore(dim, spec.rescore) if spec.rescore != "none" else None
        self._device: dict[str, dict] = {}  # device -> codes/tables/rescoring tier copied there for the kernels
        # binary kinds on x86-64 with AVX2: the codes laid out for the shuffle scan, extended as rows are appended
        self._shuffle = None
        self._shuffle_lock = threading.Lock()
        self.trained = False

    # ---- building ----------------------------------------------------------------------------------------

    @classmethod
    def build(cls, spec: IndexSpec, docids, vectors: np.ndarray, *, meta: dict | None = None) -> CompressedIndex:
        v = np.asarray(vectors)
        if v.ndim != 2:
            raise DimensionMismatch(f"vectors must be a 2-D array [n, dim], got shape {v.shape}")
        self = cls(int(v.shape[1]), spec, meta=meta)
        self.train(v)
        self.add(docids, v)
        return self

    def _factory(self) -> str:
        s = self.spec
        return {"ivf-flat": f"IVF{s.nlist},Flat", "hnsw": f"HNSW{s.hnsw_m},Flat",
                "pq": f"PQ{s.m}x{s.nbits}", "opq-pq": f"OPQ{s.m},PQ{s.m}x{s.nbits}",
                "ivf-pq": f"IVF{s.nlist},PQ{s.m}x{s.nbits}", "sq8": "SQ8"}[s.kind]

    def min_training_vectors(self) -> int:
        return {"ivf-flat": self.spec.nlist, "ivf-pq": max(self.spec.nlist, 1 << self.spec.nbits),
                "pq": 1 << self.spec.nbits, "opq-pq": 1 << self.spec.nbits}.get(self.spec.kind, 1)

    def train(self, vectors: np.ndarray) -> None:
        """Train the quantizers on at most ``spec.train_size`` vectors sampled with ``spec.seed``."""
        faiss = require("faiss")
        v = as_matrix(vectors, self.dim, "training vectors")
        if v.shape[0] > self.spec.train_size:
            rng = np.random.default_rng(self.spec.seed)
            v = v[np.sort(rng.choice(v.shape[0], self.spec.train_size, replace=False))]
        need = self.min_training_vectors()
        if v.shape[0] < need:
            raise BadInput(f"{self.spec.label} needs at least {need} training vectors, got {v.shape[0]}; "
                           f"lower nlist/nbits or train on more data")
        if self.spec.kind == "binary":
            self._codec = ResidualBinaryCodec(self.dim, self.spec.bits).fit(v)
        else:
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            base = faiss.index_factory(self.dim, self._factory(), faiss.METRIC_INNER_PRODUCT)
            if self.spec.kind == "hnsw":
                faiss.downcast_index(base).hnsw.efConstruction = self.spec.ef_construction
            no_polysemous(base)
            base.train(v)
            self._faiss = base if self.spec.kind.startswith("ivf") else faiss.IndexIDMap(base)
        self.trained = True

    @property
    def _planes(self) -> np.ndarray:
        return self._codes.arrays[0]

    @property
    def _scales(self) -> np.ndarray:
        return self._codes.arrays[1]

    @property
    def _pos_slot(self) -> np.ndarray:
        return self._codes.arrays[2]

    # ---- docids ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, docid: str) -> bool:
        return docid in self._ids

    @property
    def docids(self) -> list[str]:
        return self._ids.sorted_items()[1]

    def add(self, docids, vectors: np.ndarray, *, upsert: bool = False) -> None:
        if not self.trained:
            raise BadInput("the index is not trained; call train() (or build()) first")
        super().add(docids, vectors, upsert=upsert)

    def _add(self, docids: list[str], v: np.ndarray) -> None:
        slots = np.arange(self._next_slot, self._next_slot + len(docids), dtype=np.int64)
        if self._codec is not None:
            planes, scales = self._codec.encode(v)
            self._codes.append(planes, scales, slots)
        else:
            self._faiss.add_with_ids(v, slots)
        if self._store is not None:
            self._store.put(slots, v)
        for s, d in zip(slots.tolist(), docids):
            self._ids.add(s, d)
        self._next_slot += len(docids)
        self._device.clear()

    def _remove(self, docids: list[str]) -> None:
        slots = np.array(sorted({self._ids.slot_of(d) for d in docids}), dtype=np.int64)
        # dropping rows from the codes (FAISS's remove_ids, or filtering the binary arrays) rewrites the code array or
        # scans every inverted list, O(n) per write: a removal is a tombstone that search filters; HNSW cannot remove
        # at all, other kinds drop their tombstones in one go once they pass 1/32 of the index (at least 256), O(1)
        # amortised per removal
        self._tombstones.update(slots.tolist())
        held = len(self._codes) if self._codec is not None else self._faiss.ntotal
        if self.spec.kind != "hnsw" and len(self._tombstones) > max(256, held / 32):
            self._purge_tombstones()
        for s in slots.tolist():
            self._ids.remove_slot(s)
        self._device.clear()

    def _purge_tombstones(self) -> None:
        """Remove the tombstoned slots from the codes (not from HNSW's graph, which cannot)."""
        dead = np.array(sorted(self._tombstones), dtype=np.int64)
        if self._codec is not None:
            self._codes = GrowingRows(*self._live_codes())
            self._tombstones = set()
            self._device.clear()
            self._shuffle = None  # rows moved: laid out again at the next search
            return
        faiss = require("faiss")
        removed = self._faiss.remove_ids(faiss.IDSelectorBatch(dead.size, faiss.swig_ptr(dead)))
        if removed != dead.size:
            raise IndexCorrupt(f"FAISS removed {removed} of {dead.size} vectors; the index is inconsistent")
        self._tombstones = set()
        self._device.clear()

    def _live_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The binary planes, scales and slots of the rows not tombstoned (views when there are none)."""
        planes, scales, pos = self._codes.arrays
        if not self._tombstones:
            return planes, scales, pos
        keep = ~np.isin(pos, np.fromiter(self._tombstones, np.int64, len(self._tombstones)))
        return planes[keep], scales[keep], pos[keep]

    # ---- search ------------------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes this index holds in memory for search (codes, ids, quantizer tables), not the rescoring file."""
        ids = self._ids.nbytes()  # frozen docid table; a thawed one (after edits) costs ~200 B/doc more
        if self._codec is not None:
            shuffle = self._shuffle.nbytes if self._shuffle is not None else 0
            return (ids + self._planes.nbytes + self._scales.nbytes + self._pos_slot.nbytes + self._codec.mean.nbytes
                    + shuffle)
        faiss = require("faiss")
        return ids + int(faiss.serialize_index(self._faiss).nbytes)

    def search_param_names(self) -> tuple[str, ...]:
        names = {"ivf-flat": ("nprobe",), "ivf-pq": ("nprobe",), "hnsw": ("ef_search",),
                 "binary": ("binary_search",)}.get(self.spec.kind, ())
        return names + (("rescore", "rescore_multiplier") if self._store is not None else ())

    def _plan(self, k: int, rescore: bool | None, rescore_multiplier: int | None) -> tuple[bool, int]:
        do_rescore = self._store is not None if rescore is None else bool(rescore)
        if do_rescore and self._store is None:
            raise BadInput(f"this index has no rescoring tier (built with rescore='none'): {self.spec.label}")
        return do_rescore, k * (rescore_multiplier or self.spec.rescore_multiplier) if do_rescore else k

    def _binary_mode(self, binary_search: str | None) -> str:
        mode = binary_search or self.spec.binary_search
        if mode == "hamming" and self.spec.bits != 1:
            raise BadInput(f"Hamming search needs 1-bit codes; this index has {self.spec.bits} bits per dimension")
        return mode

    def _search(self, q: np.ndarray, k: int, *, rescore: bool | None = None, rescore_multiplier: int | None = None,
                nprobe: int | None = None, ef_search: int | None = None, binary_search: str | None = None) -> TopK:
        """Top-``k`` slots per query (``-1`` when fewer exist). With a rescoring tier (and ``rescore`` not False)
        the codes fetch ``k * rescore_multiplier`` candidates and exact inner products re-rank them."""
        do_rescore, fetch = self._plan(k, rescore, rescore_multiplier)
        extra = len(self._tombstones)  # fetch past the removed rows, then drop them
        if self._codec is not None:
            scores, slots = self._binary_candidates(q, fetch + extra, self._binary_mode(binary_search))
        else:
            scores, slots = self._faiss_candidates(q, fetch + extra, nprobe, ef_search)
        if extra:
            dead = np.isin(slots, np.fromiter(self._tombstones, np.int64, extra))
            scores, slots = drop_dead(scores, slots, dead, fetch)
        if do_rescore:
            scores, slots = self._rescore(q, slots, k)
        return TopK(scores=scores[:, :k], ids=slots[:, :k])

    def _faiss_candidates(self, q: np.ndarray, k: int, nprobe, ef_search) -> tuple[np.ndarray, np.ndarray]:
        faiss = require("faiss")
        if self.spec.kind.startswith("ivf"):
            faiss.extract_index_ivf(self._faiss).nprobe = nprobe or self.spec.nprobe
        elif self.spec.kind == "hnsw":
            faiss.downcast_index(self._faiss.index).hnsw.efSearch = ef_search or self.spec.ef_search
        return self._faiss.search(q, k)

    def _binary_candidates(self, q: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
        faiss = require("faiss")
        n = self._planes.shape[0]
        kk = min(k, n)
        if mode == "hamming":
            qp, _ = self._codec.encode(q)
            dist, pos = faiss.knn_hamming(np.ascontiguousarray(qp[:, 0]), np.ascontiguousarray(self._planes[:, 0]), kk)
            scores = (self.dim - 2 * dist).astype(np.float32)  # +-1 agreement: higher is better
        else:
            # the compiled scans with rankstack[fastscan] (on x86-64 with AVX2 the shuffle scan over the layout kept
            # here), else the numpy reference; the layout is taken before the codes, so a racing append can only
            # make the codes longer than the rows laid out, never shorter
            lay = self._shuffle_layout()
            scores, pos = self._codec.topk(q, self._planes, self._scales, kk, mode, layout=lay)
        slots = self._pos_slot[pos]
        if kk < k:
            pad = k - kk
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            slots = np.pad(slots, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), slots.astype(np.int64)

    def _shuffle_layout(self):
        """The binary codes laid out for :mod:`rankstack.index.shuffle_scan`, brought up to date with appended rows
        (O(new rows)); ``None`` where that scan cannot run (no numba, no AVX2, over 1024 dimensions). It costs about
        the codes' bytes again, built at the first search rather than at load, so an index that is never searched
        (or that runs elsewhere) does not pay it."""
        from rankstack.index import shuffle_scan

        if not shuffle_scan.available() or not shuffle_scan.fits(self.dim):
            return None
        with self._shuffle_lock:  # one layout, even when the first searches run at once
            if self._shuffle is None:
                self._shuffle = shuffle_scan.ShuffleLayout(self.spec.bits, self.dim // 8)
            lay = self._shuffle
        return lay.sync(self._planes, self._scales)  # lays out only appended rows (none, on most searches)

    def _rescore(self, q: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_s = np.full((q.shape[0], k), -np.inf, np.float32)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        for i in range(q.shape[0]):
            cand = slots[i][slots[i] >= 0]
            if cand.size == 0:
                continue
            exact = self._store.gather(cand) @ q[i]
            order = np.lexsort((cand, -exact))[:k]
            out_s[i, :order.size] = exact[order]
            out_i[i, :order.size] = cand[order]
        return out_s, out_i

    # ---- the kernel path (GPU tensors, or any tensor under TRITON_INTERPRET=1) ----------------------------

    def _search_tensor(self, queries, k: int, *, rescore: bool | None = None, rescore_multiplier: int | None = None,
                       nprobe: int | None = None, ef_search: int | None = None,
                       binary_search: str | None = None) -> TopK:
        from rankstack import kernels

        mode = self._binary_mode(binary_search) if self._codec is not None else None
        has_kernel = (self.spec.kind in ("pq", "opq-pq") and self.spec.nbits == 8) or mode == "hamming"
        if not (kernels.use_triton(queries) and has_kernel):
            return super()._search_tensor(queries, k, rescore=rescore, rescore_multiplier=rescore_multiplier,
                                          nprobe=nprobe, ef_search=ef_search, binary_search=binary_search)
        import torch

        do_rescore, fetch = self._plan(k, rescore, rescore_multiplier)
        q = queries.detach().to(torch.float32).contiguous()
        if not torch.isfinite(q).all():
            raise BadInput("query vectors contain NaN or infinite values")
        dev = self._device_state(q.device)
        block = min(1024, 1 << max(6, (int(dev["codes"].shape[0]) - 1).bit_length()))  # no wider than the codes
        extra = int(dev["dead"].numel())  # tombstoned rows are still in the codes: fetch past them
        if mode == "hamming":
            codes = _pack_signs(q - dev["mean"])
            dist, pos = kernels.hamming_topk(codes, dev["codes"], fetch + extra, block_n=block)
            scores = torch.where(pos >= 0, (self.dim - 2 * dist).to(torch.float32),
                                 torch.full_like(dist, float("-inf"), dtype=torch.float32))
        else:
            scores, pos = kernels.pq_adc_topk(self._pq_lut(q, dev), dev["codes"], fetch + extra, block_n=block)
        slots = torch.where(pos >= 0, dev["slots"][pos.clamp(min=0)], torch.full_like(pos, -1))
        if extra:
            dead = torch.isin(slots, dev["dead"])
            scores = scores.masked_fill(dead, float("-inf"))
            slots = slots.masked_fill(dead, -1)
            keep = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :fetch]
            scores, slots = scores.gather(1, keep), slots.gather(1, keep)
        if do_rescore:
            exact = kernels.rescore(q, dev["vectors"], slots, scales=dev.get("vector_scales"))
            scores, slots = kernels.topk_by_score(exact, slots, k)
        return TopK(scores=scores[:, :k].cpu().numpy().astype(np.float32),
                    ids=slots[:, :k].cpu().numpy().astype(np.int64))

    def _pq_lut(self, q, dev):
        """``[Q, M, 256]`` inner products of each query sub-vector with each sub-quantizer centroid (after the OPQ
        rotation for opq-pq)."""
        if "opq_a" in dev:
            q = q @ dev["opq_a"].T + dev["opq_b"]
        m, ksub, dsub = dev["centroids"].shape
        return (q.view(q.shape[0], m, 1, dsub) * dev["centroids"][None]).sum(-1)

    def _device_state(self, device) -> dict:
        """Codes, slot map, tables and rescoring tier as tensors on ``device``: built on first use and dropped when
        the index changes."""
        key = str(device)
        if key in self._device:
            return self._device[key]
        import torch

        faiss = require("faiss")
        st: dict = {"dead": torch.tensor(sorted(self._tombstones), dtype=torch.int64, device=device)}
        if self._codec is not None:
            st["codes"] = torch.from_numpy(np.ascontiguousarray(self._planes[:, 0])).to(device)
            st["slots"] = torch.from_numpy(self._pos_slot).to(device)
            st["mean"] = torch.from_numpy(self._codec.mean).to(device)
        else:
            pq_index = faiss_base(self._faiss)
            n = pq_index.ntotal
            st["codes"] = torch.from_numpy(faiss.vector_to_array(pq_index.codes).reshape(n, pq_index.code_size)).to(device)
            st["slots"] = torch.from_numpy(faiss.vector_to_array(self._faiss.id_map).astype(np.int64)).to(device)
            pq = pq_index.pq
            st["centroids"] = torch.from_numpy(
                faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)).to(device)
            if self.spec.kind == "opq-pq":
                lt = faiss.downcast_VectorTransform(faiss.downcast_index(self._faiss.index).chain.at(0))
                st["opq_a"] = torch.from_numpy(faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)).to(device)
                b = faiss.vector_to_array(lt.b) if lt.have_bias else np.zeros(lt.d_out, np.float32)
                st["opq_b"] = torch.from_numpy(b.astype(np.float32)).to(device)
        if self._store is not None:
            rows, scales = self._store.storage_rows(self._next_slot)
            st["vectors"] = torch.from_numpy(rows).to(device)
            if scales is not None:
                st["vector_scales"] = torch.from_numpy(scales).to(device)
        self._device[key] = st
        return st

    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        out = []
        for srow, irow in zip(topk.scores, topk.ids):
            keep = irow >= 0
            out.append(sort_pairs(list(zip(self._ids.names(irow[keep]), srow[keep].astype(float).tolist()))))
        return out

    # ---- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically: a crash or error mid-save leaves the previous index at ``path`` intact."""
        faiss = require("faiss")
        if not self.trained:
            raise BadInput("cannot save an untrained index")
        with atomic_dir(path) as tmp:
            if self._codec is not None:  # the live rows only: a load sees no tombstones
                planes, scales, pos = self._live_codes()
                np.save(tmp / "planes.npy", planes)
                np.save(tmp / "scales.npy", scales)
                np.save(tmp / "code_slots.npy", pos)
                np.save(tmp / "mean.npy", self._codec.mean)
            else:
                faiss.write_index(self._faiss, str(tmp / "faiss.index"))
            if self._store is not None:
                (tmp / "rescore").mkdir()
                self._store.write(tmp / "rescore", self._next_slot)
            slots, offsets, blob = self._ids.pack()
            np.save(tmp / "slots.npy", slots)
            np.save(tmp / "docid_offsets.npy", offsets)
            (tmp / "docids.bin").write_bytes(blob)
            tomb = sorted(self._tombstones) if self._codec is None else []
            np.save(tmp / "tombstones.npy", np.array(tomb, dtype=np.int64))
            write_json(tmp / "params.json", {
                "kind": self.KIND, "format_version": self.FORMAT_VERSION, "dim": self.dim,
                "spec": self.spec.to_dict(), "num_docs": len(self), "next_slot": self._next_slot,
                "code_bytes": self.code_bytes(), "meta": self.meta})
        # the saved rescoring file now holds every slot: switch to it and drop the in-memory copies
        if self._store is not None:
            self._store = _VectorStore.open(Path(path) / "rescore", self.dim, self.spec.rescore, self._next_slot)
        return Path(path)

    def code_bytes(self) -> int:
        """Bytes of one document's code (the PQ code size, or the binary planes plus their scales)."""
        if self._codec is not None:
            return self._codec.code_bytes
        return int(getattr(faiss_base(self._faiss), "code_size", 0))

    @classmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> CompressedIndex:
        faiss = require("faiss")
        path = Path(path)
        params = read_params(path, cls.KIND, cls.FORMAT_VERSION)
        try:
            spec = IndexSpec(**params["spec"])
            pdim, next_slot = int(params["dim"]), int(params["next_slot"])
        except (KeyError, TypeError, ValueError, BadInput) as exc:
            raise IndexCorrupt(f"{path}/params.json has a bad spec ({exc}); rebuild the index") from None
        cls.check_loaded_dim(path, pdim, dim)
        try:
            self = cls(pdim, spec, meta=params.get("meta"))
        except BadInput as exc:
            raise IndexCorrupt(f"{path}/params.json describes an index this version cannot open ({exc}); "
                               f"rebuild the index") from None
        try:
            slots = np.load(path / "slots.npy")
            offsets = np.load(path / "docid_offsets.npy")
            blob = (path / "docids.bin").read_bytes()
            tomb = np.load(path / "tombstones.npy")
        except (OSError, ValueError, EOFError) as exc:
            raise IndexCorrupt(f"{path}: the docid files are missing or truncated ({exc}); rebuild the index") from None
        n = params.get("num_docs")
        if (slots.shape != (n,) or offsets.shape != (n + 1,) or int(offsets[-1]) != len(blob)
                or (n and (np.diff(slots) <= 0).any())):
            raise IndexCorrupt(f"{path}: the docid files disagree with each other or with params.json "
                               f"({n} documents); rebuild the index")
        if spec.kind == "binary":
            try:
                planes = np.load(path / "planes.npy")
                scales = np.load(path / "scales.npy")
                pos = np.load(path / "code_slots.npy")
                mean = np.load(path / "mean.npy")
            except (OSError, ValueError, EOFError) as exc:
                raise IndexCorrupt(f"{path}: binary code files are missing or truncated ({exc}); "
                                   f"rebuild the index") from None
            want = (len(slots), spec.bits, pdim // 8)
            if planes.shape != want or planes.dtype != np.uint8:
                raise IndexCorrupt(f"{path}/planes.npy holds {planes.dtype}{planes.shape} but "
                                   f"{len(slots)} docs x {spec.bits} bit-planes x {pdim // 8} bytes were expected "
                                   f"(wrong code size); rebuild the index")
            if scales.shape != (len(slots), spec.bits) or pos.shape != (len(slots),) or mean.shape != (pdim,):
                raise IndexCorrupt(f"{path}: scales/slots/mean do not match the codes; rebuild the index")
            self._codec = ResidualBinaryCodec(pdim, spec.bits, mean)
            self._codes = GrowingRows(planes, scales, pos.astype(np.int64))
            if not np.array_equal(np.sort(self._pos_slot), slots):
                raise IndexCorrupt(f"{path}: code slots disagree with slots.npy; rebuild the index")
        else:
            try:
                self._faiss = faiss.read_index(str(path / "faiss.index"))
            except RuntimeError as exc:
                raise IndexCorrupt(f"{path}/faiss.index is unreadable or truncated ({str(exc).splitlines()[0]}); "
                                   f"rebuild the index") from None
            if self._faiss.d != pdim:
                raise IndexCorrupt(f"{path}: faiss.index holds {self._faiss.d}-d vectors but params.json says {pdim}")
            if self._faiss.ntotal != len(slots) + len(tomb):  # removed vectors kept as tombstones
                raise IndexCorrupt(f"{path}: faiss.index has {self._faiss.ntotal} vectors for {len(slots)} docids; "
                                   f"rebuild the index")
            code = int(getattr(faiss_base(self._faiss), "code_size", 0))
            if code != params.get("code_bytes"):
                raise IndexCorrupt(f"{path}: code size {code} bytes differs from params.json's "
                                   f"{params.get('code_bytes')}; rebuild the index")
        self._tombstones = set(tomb.tolist())
        self._ids = _DocidTable.frozen(slots.astype(np.int64), offsets.astype(np.int64), blob)
        self._next_slot = next_slot
        if spec.rescore != "none":
            self._store = _VectorStore.open(path / "rescore", pdim, spec.rescore, next_slot)
        self.trained = True
        return self


def _pack_signs(x):
    """``x >= 0`` packed 8 dimensions per byte, most significant bit first (numpy ``packbits``' order): uint8
    ``[n, dim / 8]`` on ``x``'s device."""
    import torch

    bits = (x >= 0).to(torch.uint8).view(x.shape[0], -1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=x.device)
    return (bits * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


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


