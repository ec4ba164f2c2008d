"""Persistent exact inner-product index on FAISS with string docids, add/remove and atomic save/load."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack._optional import require
from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt, UnknownDocid
from rankstack.index.base import read_params
from rankstack.records import TopK

logger = logging.getLogger(__name__)

__all__ = ["DenseFlatIndex"]


def _as_matrix(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise DimensionMismatch(f"{what} must be a 2-D array [n, {dim}], got shape {v.shape}")
    if v.shape[1] != dim:
        raise DimensionMismatch(f"{what} have dimension {v.shape[1]} but this index holds {dim}-d vectors; "
                                f"encode with the same model the index was built with")
    if not np.issubdtype(v.dtype, np.floating):
        raise BadInput(f"{what} must be floating point, got {v.dtype}")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.isfinite(v).all():
        raise BadInput(f"{what} contain NaN or infinite values")
    return v


def check_add(docids: Sequence[str], vectors: np.ndarray, dim: int, contains, upsert: bool
              ) -> tuple[list[str], np.ndarray, list[str]]:
    """Validate an ``add()``: returns ``(docids as str, float32 matrix, docids already present)``; an existing
    docid is an error unless ``upsert``."""
    v = _as_matrix(vectors, dim, "vectors")
    docids = [str(d) for d in docids]
    if len(docids) != v.shape[0]:
        raise BadInput(f"{len(docids)} docids for {v.shape[0]} vectors")
    if len(set(docids)) != len(docids):
        raise BadInput("duplicate docids in one add() call")
    existing = [d for d in docids if contains(d)]
    if existing and not upsert:
        raise BadInput(f"docids already in the index: {existing[:5]}; pass upsert=True to replace them")
    return docids, v, existing


class DenseFlatIndex:
    """Exact maximum inner-product search over float32 vectors (``faiss.IndexFlatIP``).

    Row ids are internal: the index keeps ``docids[row]`` in the same order as FAISS's rows, and only string
    docids leave it. ``meta`` records how the vectors were made (model name, normalisation) so a mismatched
    encoder can be detected at load time.
    """

    KIND = "dense-flat-ip"
    FORMAT_VERSION = 1

    def __init__(self, dim: int, *, meta: dict | None = None):
        if not isinstance(dim, int) or dim <= 0:
            raise BadInput(f"dimension must be a positive integer, got {dim!r}")
        faiss = require("faiss")
        self.dim = dim
        self.meta = dict(meta or {})
        self._index = faiss.IndexFlatIP(dim)
        self._docids: list[str] = []
        self._row: dict[str, int] = {}

    def __len__(self) -> int:
        return self._index.ntotal

    @property
    def docids(self) -> list[str]:
        return list(self._docids)

    def __contains__(self, docid: str) -> bool:
        return docid in self._row

    def add(self, docids: Sequence[str], vectors: np.ndarray, *, upsert: bool = False) -> None:
        """Append vectors ``[n, dim]`` for ``docids``. An existing docid is an error unless ``upsert``."""
        docids, v, existing = check_add(docids, vectors, self.dim, self._row.__contains__, upsert)
        if existing:
            self.remove(existing)
        self._index.add(v)
        for d in docids:
            self._row[d] = len(self._docids)
            self._docids.append(d)

    def remove(self, docids: Sequence[str]) -> None:
        """Remove documents by docid; unknown docids raise :class:`UnknownDocid` and nothing is removed."""
        faiss = require("faiss")
        missing = [d for d in docids if d not in self._row]
        if missing:
            raise UnknownDocid(f"unknown docids {missing[:5]}: not in this index")
        rows = np.array(sorted({self._row[d] for d in docids}), dtype=np.int64)
        removed = self._index.remove_ids(faiss.IDSelectorArray(rows.size, faiss.swig_ptr(rows)))
        assert removed == rows.size, (removed, rows.size)
        drop = set(rows.tolist())
        self._docids = [d for i, d in enumerate(self._docids) if i not in drop]  # FAISS keeps the others' order
        self._row = {d: i for i, d in enumerate(self._docids)}

    def reconstruct(self, docid: str) -> np.ndarray:
        if docid not in self._row:
            raise UnknownDocid(f"unknown docid {docid!r}: not in this index")
        return self._index.reconstruct(self._row[docid])

    def search(self, queries: np.ndarray, k: int) -> TopK:
        """Top-``k`` rows for each query vector ``[nq, dim]``; rows past the index size are ``-1``."""
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise BadInput(f"k must be a positive integer, got {k!r}")
        if len(self) == 0:
            raise BadInput("the index is empty; add documents before searching")
        q = _as_matrix(queries, self.dim, "query vectors")
        scores, ids = self._index.search(q, k)
        return TopK(scores=scores, ids=ids)

    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        """Map a :class:`TopK` to ``(docid, score)`` lists, dropping ``-1`` rows, in trec_eval order."""
        out = []
        for srow, irow in zip(topk.scores, topk.ids):
            pairs = [(self._docids[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
            pairs.sort(key=lambda p: (p[1], p[0]), reverse=True)
            out.append(pairs)
        return out

    # ---- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` atomically: a failure leaves any previous index there intact."""
        faiss = require("faiss")
        with atomic_dir(path) as tmp:
            faiss.write_index(self._index, str(tmp / "faiss.index"))
            with open(tmp / "docids.json", "w", encoding="utf-8") as fh:
                json.dump(self._docids, fh)
            write_json(tmp / "params.json", {"kind": self.KIND, "format_version": self.FORMAT_VERSION,
                                             "dim": self.dim, "num_docs": len(self), "meta": self.meta})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DenseFlatIndex:
        faiss = require("faiss")
        path = Path(path)
        params = read_params(path, cls.KIND, cls.FORMAT_VERSION)
        try:
            index = faiss.read_index(str(path / "faiss.index"))
        except RuntimeError as exc:
            raise IndexCorrupt(f"{path}/faiss.index is unreadable or truncated ({str(exc).splitlines()[0]}); "
                               f"rebuild the index") from None
        try:
            docids = json.loads((path / "docids.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise IndexCorrupt(f"{path}/docids.json is missing or corrupt ({exc}); rebuild the index") from None
        if index.d != params["dim"]:
            raise IndexCorrupt(f"{path}: faiss.index holds {index.d}-d vectors but params.json says {params['dim']}")
        if index.ntotal != len(docids) or index.ntotal != params["num_docs"]:
            raise IndexCorrupt(f"{path}: {index.ntotal} vectors, {len(docids)} docids, params say "
                               f"{params['num_docs']}; the files are inconsistent, rebuild the index")
        self = cls(params["dim"], meta=params.get("meta"))
        self._index = index
        self._docids = list(docids)
        self._row = {d: i for i, d in enumerate(self._docids)}
        return self
