"""Saving and opening a :class:`~rankstack.index.compressed.CompressedIndex`: one folder written atomically (codes or
the FAISS index, the docid table, tombstones, the rescoring tier, params.json), checked for consistency at open."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack._optional import require
from rankstack.errors import BadInput, IndexCorrupt
from rankstack.index.base import GrowingRows, IndexSpec, read_params
from rankstack.index.binary import ResidualBinaryCodec
from rankstack.index.compressed_parts import DocidTable, VectorStore, faiss_base

__all__ = ["save", "load"]


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
        self._store = VectorStore.open(Path(path) / "rescore", self.dim, self.spec.rescore, self._next_slot)
    return Path(path)


def load(cls, path: str | os.PathLike, *, dim: int | None = None):
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
    self._ids = DocidTable.frozen(slots.astype(np.int64), offsets.astype(np.int64), blob)
    self._next_slot = next_slot
    if spec.rescore != "none":
        self._store = VectorStore.open(path / "rescore", pdim, spec.rescore, next_slot)
    self.trained = True
    return self
