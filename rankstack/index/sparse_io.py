"""Saving and opening a :class:`~rankstack.index.sparse.SparseIndex`: compacted impacts and text tokens in one npz,
docids, vocabulary and params.json, written atomically and checked for consistency at open."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack.errors import IndexCorrupt
from rankstack.index.base import read_params

__all__ = ["save", "load", "bytes_per_doc"]


def save(self, path: str | os.PathLike) -> Path:
    """Write atomically (a failure leaves any previous index at ``path`` intact)."""
    self.compact()
    m, t = self._impacts, self._tokens
    vdtype = np.int16 if m.nnz == 0 or int(m.data.max()) < 32768 else np.int32
    with atomic_dir(path) as tmp:
        np.savez(tmp / "impacts.npz", data=m.data.astype(vdtype), indices=m.indices.astype(np.int32),
                 indptr=m.indptr.astype(np.int64), tok_indices=t.indices.astype(np.int32),
                 tok_indptr=t.indptr.astype(np.int64))
        with open(tmp / "docids.json", "w", encoding="utf-8") as fh:
            json.dump(self._rows, fh)
        with open(tmp / "vocab.json", "w", encoding="utf-8") as fh:
            json.dump(self.vocab, fh)
        write_json(tmp / "params.json", {
            "kind": self.KIND, "format_version": self.FORMAT_VERSION, "num_docs": len(self),
            "vocab_size": self.dim, "vocab_fingerprint": self.fingerprint, "scale": self.scale,
            "nnz": int(m.nnz), "meta": self.meta})
    return Path(path)


def load(cls, path: str | os.PathLike):
    import scipy.sparse as sp

    path = Path(path)
    params = read_params(path, cls.KIND, cls.FORMAT_VERSION)
    try:
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        docids = json.loads((path / "docids.json").read_text(encoding="utf-8"))
        with np.load(path / "impacts.npz") as z:
            arrays = {k: z[k] for k in ("data", "indices", "indptr", "tok_indices", "tok_indptr")}
    except (OSError, ValueError, KeyError, json.JSONDecodeError, EOFError) as exc:
        raise IndexCorrupt(f"{path}: the sparse index files are missing or corrupt ({exc}); rebuild the "
                           f"index") from None
    n, v = len(docids), len(vocab)
    if (n != params.get("num_docs") or v != params.get("vocab_size") or arrays["indptr"].size != n + 1
            or arrays["tok_indptr"].size != n + 1 or arrays["data"].size != params.get("nnz")
            or arrays["indptr"][-1] != arrays["data"].size or arrays["tok_indptr"][-1] != arrays["tok_indices"].size
            or (arrays["indices"].size and int(arrays["indices"].max()) >= v)
            or (arrays["tok_indices"].size and int(arrays["tok_indices"].max()) >= v)):
        raise IndexCorrupt(f"{path}: docids, vocabulary and impacts disagree (params say {params.get('num_docs')} "
                           f"documents, {params.get('vocab_size')} tokens); the files are inconsistent, rebuild "
                           f"the index")
    self = cls(vocab, fingerprint=params["vocab_fingerprint"], scale=params["scale"], meta=params.get("meta"))
    self._impacts = sp.csr_matrix((arrays["data"].astype(np.int32), arrays["indices"], arrays["indptr"]),
                                  shape=(n, v))
    self._tokens = sp.csr_matrix((np.ones(arrays["tok_indices"].size, np.uint8), arrays["tok_indices"],
                                  arrays["tok_indptr"]), shape=(n, v))
    self._rows = list(docids)
    self._row = {d: i for i, d in enumerate(docids)}
    self._dead = np.zeros(max(64, n), bool)
    np.add.at(self._df, self._tokens.indices, 1)
    return self


def bytes_per_doc(self) -> float:
    """On-disk bytes per document of the impacts (int16 or int32 values + int32 columns + row pointers)."""
    m = self._impacts
    vbytes = 2 if m.nnz == 0 or int(m.data.max()) < 32768 else 4
    return (m.nnz * (vbytes + 4) + (m.shape[0] + 1) * 8) / max(len(self), 1)
