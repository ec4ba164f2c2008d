"""The one place that knows the concrete index classes: saved kind -> class, and index spec -> class.

``open_index(path)`` opens any saved RankStack index (the CLI's ``search --index`` and the service use it);
``new_vector_index(spec, dim)`` / ``build_vector_index(spec, docids, vectors)`` make the class an
:class:`~rankstack.index.base.IndexSpec` names (``flat`` is exact; every other kind is compressed).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput, IndexCorrupt
from rankstack.index.base import IndexSpec, VectorIndex, read_params

__all__ = ["open_index", "load_vector_index", "new_vector_index", "build_vector_index", "INDEX_CLASSES"]

# saved kind (params.json "kind") -> (module, class)
INDEX_CLASSES = {
    "dense-flat-ip": ("rankstack.index.faiss_flat", "DenseFlatIndex"),
    "dense-compressed": ("rankstack.index.compressed", "CompressedIndex"),
    "lucene-bm25": ("rankstack.index.lucene", "LuceneIndex"),
    "bm25-matrix": ("rankstack.index.bm25_matrix", "BM25Matrix"),
    "sparse-impact": ("rankstack.index.sparse", "SparseIndex"),
    "multi-vector": ("rankstack.index.multivector", "MultiVectorIndex"),
    "multi-vector-plaid": ("rankstack.index.multivector", "PlaidIndex"),
}
# a sharded collection (rankstack.retrieval.sharded) is opened by rankstack.distributed.sharded.ShardedResources
_OTHER_KINDS = ("sharded",)
_VECTOR_KINDS = ("dense-flat-ip", "dense-compressed")


def _class(kind: str):
    module, name = INDEX_CLASSES[kind]
    return getattr(importlib.import_module(module), name)


def saved_kind(path: str | os.PathLike) -> str:
    kind = read_params(path, None, None).get("kind")
    if kind not in INDEX_CLASSES and kind not in _OTHER_KINDS:
        raise IndexCorrupt(f"{path} holds an index of unknown kind {kind!r}; this RankStack opens "
                           f"{', '.join(INDEX_CLASSES)}")
    return kind


def open_index(path: str | os.PathLike):
    """Open whatever index ``path`` holds: a :class:`~rankstack.index.lucene.LuceneIndex`, a
    :class:`~rankstack.index.base.VectorIndex`, a :class:`~rankstack.index.sparse.SparseIndex` or a multi-vector
    index (:mod:`rankstack.index.multivector`)."""
    kind = saved_kind(path)
    if kind in _OTHER_KINDS:
        raise BadInput(f"{path} is a {kind} collection: open it with rankstack.distributed.sharded.ShardedResources "
                       f"(rankstack search --index {path})")
    cls = _class(kind)
    return cls(path) if kind == "lucene-bm25" else cls.load(path)


def load_vector_index(path: str | os.PathLike, *, dim: int | None = None) -> VectorIndex:
    kind = saved_kind(path)
    if kind not in _VECTOR_KINDS:
        raise IndexCorrupt(f"{path} holds a {kind!r} index, not a vector index; a dense retriever needs one built "
                           f"with `rankstack index --kind dense` (or a compressed kind)")
    return _class(kind).load(Path(path), dim=dim)


def new_vector_index(spec: IndexSpec, dim: int, *, meta: dict | None = None) -> VectorIndex:
    """An empty index of the kind ``spec`` names (compressed kinds still need ``train()``)."""
    if spec.kind == "flat":
        return _class("dense-flat-ip")(dim, meta=meta)
    return _class("dense-compressed")(dim, spec, meta=meta)


def build_vector_index(spec: IndexSpec, docids: Sequence[str], vectors: np.ndarray, *,
                       meta: dict | None = None) -> VectorIndex:
    """Train (when the kind needs it) and fill an index of the kind ``spec`` names."""
    v = np.asarray(vectors, np.float32)
    index = new_vector_index(spec, int(v.shape[1]) if v.ndim == 2 else 0, meta=meta)
    if hasattr(index, "train"):
        index.train(v)
    index.add(docids, v)
    return index
