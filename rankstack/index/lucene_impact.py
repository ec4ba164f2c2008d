"""Lucene impact index of learned-sparse vectors, through Pyserini/Anserini (the index of record for ``splade``).

Built from a :class:`~rankstack.index.sparse.SparseIndex`'s integer impacts as a pre-tokenized
``JsonVectorCollection`` (``-impact -pretokenized``, as Pyserini indexes SPLADE), searched with Anserini's
``SimpleImpactSearcher``: score = sum over query terms of query weight x document impact, the same integers the
scipy engine multiplies.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence


from rankstack._atomic import atomic_dir, write_json
from rankstack.errors import BadInput, IndexCorrupt
from rankstack.index.jvm import import_pyserini, lift_clause_limit
from rankstack.index.lucene import open_lucene_dir

logger = logging.getLogger(__name__)

__all__ = ["LuceneImpactIndex"]


class LuceneImpactIndex:
    """A folder with ``lucene/`` (the impact index) and ``params.json`` (the source's version and scale)."""

    KIND = "lucene-impact"
    FORMAT_VERSION = 1

    def __init__(self, path: str | os.PathLike):
        self.path, self.params = open_lucene_dir(path, self.KIND, self.FORMAT_VERSION)
        import_pyserini("pyserini.search.lucene")
        lift_clause_limit()
        from jnius import autoclass

        self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(self.path / "lucene"))

    def __len__(self) -> int:
        return self.params["num_docs"]

    @classmethod
    def build(cls, sparse, path: str | os.PathLike, *, threads: int = 1, meta: dict | None = None) -> LuceneImpactIndex:
        """Index ``sparse``'s impacts (a :class:`SparseIndex`) into ``path`` atomically."""
        import_pyserini("pyserini.index.lucene")
        from jnius import autoclass

        impacts, docids, vocab = sparse.impacts(), sparse.docids, sparse.vocab
        if not docids:
            raise BadInput("cannot build an impact index from an empty sparse index")
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            src = tmp / "input"
            src.mkdir()
            with open(src / "docs.jsonl", "w", encoding="utf-8") as fh:
                for r, d in enumerate(docids):
                    s, e = impacts.indptr[r], impacts.indptr[r + 1]
                    vec = {vocab[i]: int(v) for i, v in zip(impacts.indices[s:e], impacts.data[s:e])}
                    fh.write(json.dumps({"id": d, "contents": "", "vector": vec}) + "\n")
            args = ["-collection", "JsonVectorCollection", "-input", str(src), "-index", str(tmp / "lucene"),
                    "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(threads), "-impact",
                    "-pretokenized", "-quiet"]
            autoclass("io.anserini.index.IndexCollection").main(args)
            (src / "docs.jsonl").unlink()
            src.rmdir()
            write_json(tmp / "params.json", {"kind": cls.KIND, "format_version": cls.FORMAT_VERSION,
                                             "num_docs": len(docids), "scale": sparse.scale,
                                             "vocab_fingerprint": sparse.fingerprint, **(meta or {})})
        logger.info("indexed %d sparse vectors into %s in %.1f s", len(docids), path, time.perf_counter() - t0)
        index = cls(path)
        if len(index) != index._searcher.get_total_num_docs():
            raise IndexCorrupt(f"{path}: Lucene holds {index._searcher.get_total_num_docs()} documents, "
                               f"expected {len(docids)}")
        return index

    def search(self, queries: Sequence[dict[str, int]], k: int, *, threads: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` (docid, score) per query; ``queries``: token -> integer weight."""
        from jnius import autoclass

        JHashMap, JArrayList = autoclass("java.util.HashMap"), autoclass("java.util.ArrayList")
        JInt = autoclass("java.lang.Integer")
        qs, ids = JArrayList(), JArrayList()
        for i, q in enumerate(queries):
            m = JHashMap()
            for tok, w in q.items():
                m.put(tok, JInt(int(w)))
            qs.add(m)
            ids.add(str(i))
        if not queries:
            return []
        res = self._searcher.batch_search(qs, ids, int(k), int(max(threads, 1)))
        hits = {r.getKey(): r.getValue() for r in res.entrySet().toArray()}
        out = []
        for i in range(len(queries)):
            pairs = [(h.docid, float(h.score)) for h in hits.get(str(i), [])]
            pairs.sort(key=lambda p: (p[1], p[0]), reverse=True)
            out.append(pairs)
        return out


def query_dicts(sparse, q_impacts) -> list[dict[str, int]]:
    """Int CSR query impacts -> token -> weight dicts (for Lucene and Seismic)."""
    out = []
    for r in range(q_impacts.shape[0]):
        s, e = q_impacts.indptr[r], q_impacts.indptr[r + 1]
        out.append({sparse.vocab[i]: int(v) for i, v in zip(q_impacts.indices[s:e], q_impacts.data[s:e])})
    return out
