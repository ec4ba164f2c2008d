"""Persistent exact inner-product index on FAISS with string docids, add/remove and atomic save/load."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack._optional import require
from rankstack.errors import BadInput, IndexCorrupt, UnknownDocid
from rankstack.index.base import IndexSpec, VectorIndex, read_params, sort_pairs
from rankstack.records import TopK

logger = logging.getLogger(__name__)

__all__ = ["DenseFlatIndex"]


class DenseFlatIndex(VectorIndex):
    """Exact maximum inner-product search over float32 vectors (``faiss.IndexFlatIP``): the ``flat`` index kind.

    Row ids are internal: the index keeps ``docids[row]`` in the same order as FAISS's rows, and only string
    docids leave it. ``meta`` records how the vectors were made (model name, normalisation) so a mismatched
    encoder can be detected at load time.
    """

    KIND = "dense-flat-ip"
    FORMAT_VERSION = 1

    def __init__(self, dim: int, *, meta: dict | None = None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise BadInput(f"dimension must be a positive integer, got {dim!r}")
        faiss = require("faiss")
        self.dim = dim
        self.meta = dict(meta or {})
        self.spec = IndexSpec("flat")
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

    def _add(self, docids: list[str], vectors: np.ndarray) -> None:
        self._index.add(vectors)
        for d in docids:
            self._row[d] = len(self._docids)
            self._docids.append(d)

    def _remove(self, docids: list[str]) -> None:
        faiss = require("faiss")
        rows = np.array(sorted({self._row[d] for d in docids}), dtype=np.int64)
        removed = self._index.remove_ids(faiss.IDSelectorArray(rows.size, faiss.swig_ptr(rows)))
        if removed != rows.size:
            raise IndexCorrupt(f"FAISS removed {removed} of {rows.size} vectors; the index is inconsistent")
        drop = set(rows.tolist())
        self._docids = [d for i, d in enumerate(self._docids) if i not in drop]  # FAISS keeps the others' order
        self._row = {d: i for i, d in enumerate(self._docids)}

    def reconstruct(self, docid: str) -> np.ndarray:
        if docid not in self._row:
            raise UnknownDocid(f"unknown docid {docid!r}: not in this index")
        return self._index.reconstruct(self._row[docid])

    def vectors(self) -> np.ndarray:
        """All vectors ``[n, dim]`` in :attr:`docids` order (e.g. to build a compressed index without re-encoding)."""
        return self._index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)

    def _search(self, queries: np.ndarray, k: int, **params) -> TopK:
        scores, ids = self._index.search(queries, k)
        return TopK(scores=scores, ids=ids)

    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        return [sort_pairs([(self._docids[i], float(s)) for s, i in zip(srow, irow) if i >= 0])
                for srow, irow in zip(topk.scores, topk.ids)]

    def memory_bytes(self) -> int:
        return len(self) * self.dim * 4 + sum(len(d) for d in self._docids)

    def code_bytes(self) -> int:
        """Bytes per document's vector (float32)."""
        return self.dim * 4

    # ---- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        faiss = require("faiss")
        with atomic_dir(path) as tmp:
            faiss.write_index(self._index, str(tmp / "faiss.index"))
            with open(tmp / "docids.json", "w", encoding="utf-8") as fh:
                json.dump(self._docids, fh)
            write_json(tmp / "params.json", {"kind": self.KIND, "format_version": self.FORMAT_VERSION,
                                             "dim": self.dim, "num_docs": len(self), "meta": self.meta})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> DenseFlatIndex:
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
        if index.d != params.get("dim"):
            raise IndexCorrupt(f"{path}: faiss.index holds {index.d}-d vectors but params.json says {params.get('dim')}")
        cls.check_loaded_dim(path, index.d, dim)
        if index.ntotal != len(docids) or index.ntotal != params.get("num_docs"):
            raise IndexCorrupt(f"{path}: {index.ntotal} vectors, {len(docids)} docids, params say "
                               f"{params.get('num_docs')}; the files are inconsistent, rebuild the index")
        self = cls(params["dim"], meta=params.get("meta"))
        self._index = index
        self._docids = list(docids)
        self._row = {d: i for i, d in enumerate(self._docids)}
        return self
