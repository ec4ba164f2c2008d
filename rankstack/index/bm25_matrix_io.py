"""Saving and opening a :class:`~rankstack.index.bm25_matrix.BM25Matrix`: postings with Lucene's length table (so a
shard server searching it needs no JVM), terms, docids and params.json, written atomically and checked at open."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack.errors import IndexCorrupt
from rankstack.index.base import read_params

__all__ = ["save", "load"]


def save(self, path: str | os.PathLike) -> Path:
    with atomic_dir(path) as tmp:
        # Lucene's length table travels with the postings: searching needs no JVM (shard servers have none)
        np.savez(tmp / "postings.npz", indptr=self.indptr, docs=self.docs, freqs=self.freqs,
                 length_codes=self.length_codes, length_table=self._table)
        (tmp / "terms.json").write_text(json.dumps(self.terms), encoding="utf-8")
        (tmp / "docids.json").write_text(json.dumps(self.docids), encoding="utf-8")
        write_json(tmp / "params.json", {"kind": self.KIND, "format_version": self.FORMAT_VERSION,
                                         "num_docs": len(self), "num_terms": len(self.terms),
                                         "sum_total_term_freq": self.sum_ttf, "meta": self.meta})
    return Path(path)


def load(cls, path: str | os.PathLike):
    path = Path(path)
    params = read_params(path, cls.KIND, cls.FORMAT_VERSION)
    try:
        with np.load(path / "postings.npz") as z:
            arrays = {k: z[k] for k in ("indptr", "docs", "freqs", "length_codes")}
            table = z["length_table"] if "length_table" in z.files else None
        terms = json.loads((path / "terms.json").read_text(encoding="utf-8"))
        docids = json.loads((path / "docids.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise IndexCorrupt(f"{path}: the BM25 matrix files are missing or corrupt ({exc}); rebuild it") from None
    if (len(docids) != params.get("num_docs") or len(terms) != params.get("num_terms")
            or arrays["indptr"].size != len(terms) + 1 or arrays["indptr"][-1] != arrays["docs"].size
            or arrays["length_codes"].size != len(docids)):
        raise IndexCorrupt(f"{path}: postings, terms and docids disagree; rebuild the BM25 matrix")
    out = cls(docids, terms, arrays["indptr"], arrays["docs"], arrays["freqs"], arrays["length_codes"],
              params["sum_total_term_freq"], params.get("meta"))
    if table is not None:
        if table.shape != (256,):
            raise IndexCorrupt(f"{path}: the stored length table is corrupt; rebuild the BM25 matrix")
        out._table = table.astype(np.int64)
    return out
