"""Lucene impact index of learned-sparse vectors, through Pyserini/Anserini (the index of record for ``splade``).

Built from a :class:`~rankstack.index.sparse.SparseIndex`'s integer impacts as a pre-tokenized
``JsonVectorCollection`` (``-impact -pretokenized``, as Pyserini indexes SPLADE), searched with Anserini's
``SimpleImpactSearcher``: score = sum over query terms of query weight x document impact, the same integers the
scipy engine multiplies.

It follows writes in place (:meth:`LuceneImpactIndex.update`): changed documents are laid out by Anserini's own
generator and analyzer, as the build lays them out, and written as a new segment that replaces their earlier
versions by docid (tombstones until Lucene's merges drop them), ending in one atomic Lucene commit that records
the source's :meth:`~rankstack.index.sparse.SparseIndex.signature`. Impact scores use no collection statistics,
so an updated index answers exactly as one built afresh from the same documents.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

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

    _write_locks: dict[Path, threading.Lock] = {}  # one writer per folder in this process (Lucene's write.lock)
    _write_locks_guard = threading.Lock()

    def __init__(self, path: str | os.PathLike):
        self.path, self.params = open_lucene_dir(path, self.KIND, self.FORMAT_VERSION)
        import_pyserini("pyserini.search.lucene")
        lift_clause_limit()
        self._searcher = None
        self.refresh()

    def refresh(self) -> None:
        """Search the folder's latest commit (after an update made through another object)."""
        from jnius import autoclass

        old, self._searcher = self._searcher, autoclass("io.anserini.search.SimpleImpactSearcher")(
            str(self.path / "lucene"))
        if old is not None:
            old.close()
        folder = autoclass("org.apache.lucene.store.FSDirectory").open(
            autoclass("java.nio.file.Paths").get(str(self.path / "lucene")))
        try:  # the commit's segment list: cheaper than a second reader
            infos = autoclass("org.apache.lucene.index.SegmentInfos").readLatestCommit(folder)
        finally:
            folder.close()
        segments = infos.asList().toArray()
        # documents in the segments less the replaced and deleted versions they still hold
        self._live = sum(int(c.info.maxDoc()) - int(c.getDelCount()) for c in segments)
        self._segments = len(segments)
        self.source_version = infos.getUserData().get("source_version") or self.params.get("source_version")

    def __len__(self) -> int:
        return self._live

    def segments(self) -> int:
        """Segments in the commit searched (each update adds one; Lucene's merges lower it)."""
        return self._segments

    def update(self, puts: Sequence[tuple[str, dict[str, int]]], deletes: Sequence[str], source_version: str) -> None:
        """Add or replace ``puts`` ((docid, token -> impact) pairs), delete ``deletes`` (unknown docids are
        no-ops), and commit, recording ``source_version``; then search the new commit. Nothing is visible or
        durable before the commit, and a failure leaves the previous commit in place."""
        from jnius import autoclass

        j = _classes()
        t0 = time.perf_counter()
        key = (self.path / "lucene").resolve()
        with LuceneImpactIndex._write_locks_guard:
            lock = LuceneImpactIndex._write_locks.setdefault(key, threading.Lock())
        with lock:
            config = j["IndexWriterConfig"](j["WhitespaceAnalyzer"]())  # what -pretokenized indexes with
            config.setOpenMode(j["IndexWriterConfig.OpenMode"].APPEND)
            config.setSimilarity(j["ImpactSimilarity"]())
            writer = j["IndexWriter"](j["FSDirectory"].open(j["Paths"].get(str(key))), config)
            try:
                args = j["IndexCollection.Args"]()
                args.impact, args.pretokenized = True, True
                generator = j["DefaultLuceneDocumentGenerator"](args)
                mapper, empty = j["ObjectMapper"](), j["ArrayList"]()
                gone = list(deletes)
                for docid, vec in puts:
                    vec = {t: int(v) for t, v in vec.items() if int(v) > 0}
                    if not vec:  # an empty pseudo-document: the build skips it too, nothing to match
                        gone.append(docid)
                        continue
                    node = mapper.readTree(json.dumps({"id": docid, "contents": "", "vector": vec}))
                    doc = generator.createDocument(j["JsonVectorCollection.Document"](node))
                    writer.updateDocument(j["Term"]("id", docid), doc)
                for docid in gone:  # updateDocuments without documents: a delete by term
                    writer.updateDocuments(j["Term"]("id", docid), empty)
                data = autoclass("java.util.HashMap")()
                data.put("source_version", str(source_version))
                writer.setLiveCommitData(data.entrySet())
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            writer.close()
        self.refresh()
        logger.debug("lucene impact %s: %d puts, %d deletes committed in %.3f s", self.path, len(puts), len(deletes),
                     time.perf_counter() - t0)

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
        expected = int(np.count_nonzero(np.diff(impacts.indptr)))  # documents without impacts are skipped
        if len(index) != expected:
            raise IndexCorrupt(f"{path}: Lucene holds {len(index)} documents, expected {expected}")
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


_LOADED: dict = {}


def _classes() -> dict:
    """The Java classes an update needs, loaded once (after Pyserini has started the JVM)."""
    if not _LOADED:
        import_pyserini("pyserini.index.lucene")
        from jnius import autoclass

        for name in ("org.apache.lucene.store.FSDirectory", "java.nio.file.Paths",
                     "org.apache.lucene.index.IndexWriterConfig", "org.apache.lucene.index.IndexWriter",
                     "org.apache.lucene.index.IndexWriterConfig$OpenMode", "org.apache.lucene.index.Term",
                     "org.apache.lucene.analysis.core.WhitespaceAnalyzer",
                     "io.anserini.search.similarity.ImpactSimilarity", "io.anserini.index.IndexCollection$Args",
                     "io.anserini.index.generator.DefaultLuceneDocumentGenerator",
                     "io.anserini.collection.JsonVectorCollection$Document",
                     "com.fasterxml.jackson.databind.ObjectMapper", "java.util.ArrayList"):
            _LOADED[name.rsplit(".", 1)[-1].replace("$", ".")] = autoclass(name)
    return _LOADED


def query_dicts(sparse, q_impacts) -> list[dict[str, int]]:
    """Int CSR query impacts -> token -> weight dicts (for Lucene and Seismic)."""
    out = []
    for r in range(q_impacts.shape[0]):
        s, e = q_impacts.indptr[r], q_impacts.indptr[r + 1]
        out.append({sparse.vocab[i]: int(v) for i, v in zip(q_impacts.indices[s:e], q_impacts.data[s:e])})
    return out
