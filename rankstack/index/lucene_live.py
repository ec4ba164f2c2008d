"""A Lucene BM25 index that takes additions, replacements and deletions in place, for the service.

:class:`~rankstack.index.lucene.LuceneIndex` is written once, atomically. A collection that changes document by
document would rebuild it on every write, at a cost that grows with the collection. :class:`LiveLuceneIndex` keeps
one Lucene ``IndexWriter`` open instead and does what Lucene is built for: a write adds a small segment (documents
analysed and laid out exactly as Pyserini's indexer does: Anserini's default English analyzer and document
generator, so its runs equal a fresh build's), a replacement or deletion marks the old version deleted (a
tombstone), and Lucene's tiered merge policy merges segments on its own background threads, dropping the
tombstones as it goes.

Each write ends with a Lucene commit carrying ``applied_seq`` (the collection log's sequence it includes) in the
commit's user data: a commit is atomic (a new ``segments_N`` file written and synced last), so a crash during a
write or a merge leaves the previous commit, and its ``applied_seq`` says what to replay.

Until a merge drops them, deleted and replaced versions still count in BM25's collection statistics (document
frequencies, document count, average length), as in Elasticsearch and Solr; :meth:`LiveLuceneIndex.expunge_deletes`
merges them away (runs then equal a fresh build's), and collections that need exact statistics after every write
can choose ``bm25_updates: rebuild``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from rankstack._atomic import write_json
from rankstack.errors import IndexCorrupt, RankStackError
from rankstack.index.jvm import import_pyserini
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["LiveLuceneIndex"]

KIND = "lucene-bm25"
FORMAT_VERSION = 1


class _Lucene:
    """The Java classes, loaded once (after Pyserini has started the JVM with RankStack's settings)."""

    _loaded = None

    @classmethod
    def get(cls):
        if cls._loaded is None:
            import_pyserini("pyserini.index.lucene")
            from jnius import autoclass

            cls._loaded = {name.rsplit(".", 1)[-1].replace("$", "."): autoclass(name) for name in (
                "org.apache.lucene.store.FSDirectory", "java.nio.file.Paths",
                "org.apache.lucene.index.IndexWriterConfig", "org.apache.lucene.index.IndexWriter",
                "org.apache.lucene.index.IndexWriterConfig$OpenMode", "org.apache.lucene.index.TieredMergePolicy",
                "org.apache.lucene.index.SegmentInfos", "org.apache.lucene.index.DirectoryReader",
                "org.apache.lucene.index.Term", "io.anserini.analysis.DefaultEnglishAnalyzer",
                "io.anserini.index.generator.DefaultLuceneDocumentGenerator",
                "io.anserini.collection.JsonCollection$Document", "java.util.HashMap", "java.util.ArrayList")}
        return cls._loaded


def _is_live(path: Path) -> bool:
    try:
        return bool(json.loads((path / "params.json").read_text()).get("live"))
    except (OSError, ValueError):
        return False


class LiveLuceneIndex:
    """``path/lucene`` (a Lucene index) and ``path/params.json``, open for writing by this process (Lucene's
    ``write.lock`` keeps a second writer out). Searches go through :class:`~rankstack.retrieval.bm25.BM25Retriever`
    on the latest commit (``BM25Retriever(live)``); open a new one after each write to see it."""

    docstore = None  # the service keeps its documents in its log
    _open: dict[Path, LiveLuceneIndex] = {}  # path -> the writer this process holds there
    _open_lock = threading.RLock()

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with LiveLuceneIndex._open_lock:
            # one writer per folder per process: a second open (a collection reopened in the same process)
            # closes the first, whose owner is gone or about to be; Lucene's write.lock keeps other processes out
            old = LiveLuceneIndex._open.pop(self.path.resolve(), None)
            if old is not None:
                logger.debug("lucene %s: closing the writer of an earlier open", self.path)
                old.close()
            LiveLuceneIndex._open[self.path.resolve()] = self
        self.lucene_dir = self.path / "lucene"
        self._lock = threading.Lock()
        j = _Lucene.get()
        self._j = j
        self.lucene_dir.mkdir(parents=True, exist_ok=True)
        self._dir = j["FSDirectory"].open(j["Paths"].get(str(self.lucene_dir)))
        self._open_writer()
        self._generator = j["DefaultLuceneDocumentGenerator"]()
        if not _is_live(self.path):  # new, or a once-built LuceneIndex the service held before 0.3: taken over
            write_json(self.path / "params.json", {
                "kind": KIND, "format_version": FORMAT_VERSION, "live": True, "documents_stored": False,
                "fields": "contents = title + ' ' + text", "analyzer": "pyserini default (English, Porter, stopwords)"})

    def _open_writer(self) -> None:
        j = self._j
        config = j["IndexWriterConfig"](j["DefaultEnglishAnalyzer"].newDefaultInstance())
        config.setOpenMode(j["IndexWriterConfig.OpenMode"].CREATE_OR_APPEND)
        policy = j["TieredMergePolicy"]()
        policy.setForceMergeDeletesPctAllowed(0.0)  # expunge_deletes leaves no tombstone behind
        config.setMergePolicy(policy)
        try:
            self._writer = j["IndexWriter"](self._dir, config)
        except Exception as exc:  # a Java exception (corrupt or locked index) surfaces as JavaException
            if "LockObtainFailed" in str(exc):  # another process writes here: its index must not be rebuilt
                raise RankStackError(f"{self.lucene_dir} is locked by another writer ({exc}); stop the process "
                                     f"that serves this collection, or serve it from another data directory") from exc
            raise IndexCorrupt(f"{self.lucene_dir}: cannot open the Lucene index for writing ({exc}); delete the "
                               f"folder to rebuild it from the collection's log") from exc
        self._seq = self._read_seq()

    # ---- state -------------------------------------------------------------------------------------------------

    def _read_seq(self) -> int | None:
        """``applied_seq`` of the last commit; None for an empty folder or an index written without one."""
        data = {}
        for entry in self._writer.getLiveCommitData() or []:
            data[entry.getKey()] = entry.getValue()
        seq = data.get("applied_seq")
        return int(seq) if seq is not None else None

    @property
    def applied_seq(self) -> int | None:
        return self._seq

    def __len__(self) -> int:
        """Live documents in the last commit."""
        return int(self._writer.getDocStats().numDocs)

    def segments(self) -> int:
        """Segments in the last commit (merges lower it)."""
        return int(self._j["SegmentInfos"].readLatestCommit(self._dir).size())

    def deleted(self) -> int:
        """Deleted or replaced versions still held by segments of the last commit (tombstones until a merge)."""
        reader = self._j["DirectoryReader"].open(self._dir)
        try:
            return int(reader.numDeletedDocs())
        finally:
            reader.close()

    # ---- writing -----------------------------------------------------------------------------------------------

    def _lucene_doc(self, d: Document):
        """The Lucene document Pyserini's indexer makes of ``d``; None for contents that are empty after Java's
        ``trim()`` (Anserini's generator refuses those, and Pyserini's indexer skips them: nothing to match)."""
        if all(c <= " " for c in d.contents):
            return None
        return self._generator.createDocument(self._j["JsonCollection.Document"].fromFields(d.docid, d.contents))

    def write(self, puts: Sequence[Document], deletes: Sequence[str], seq: int) -> None:
        """Add or replace ``puts``, delete ``deletes`` (unknown docids are no-ops) and commit as ``seq``. Nothing
        is visible, or durable, before the commit; a failure rolls the writer back to the previous commit."""
        j = self._j
        t0 = time.perf_counter()
        with self._lock:
            try:
                empty = j["ArrayList"]()
                for d in puts:
                    doc = self._lucene_doc(d)
                    if doc is None:
                        deletes = [*deletes, d.docid]  # its earlier version, if any, must go
                    else:
                        self._writer.updateDocument(j["Term"]("id", d.docid), doc)
                for docid in deletes:
                    # updateDocuments with no documents is a delete by term (pyjnius cannot pick between
                    # IndexWriter.deleteDocuments' Term... and Query... overloads)
                    self._writer.updateDocuments(j["Term"]("id", docid), empty)
                self._commit(seq)
            except BaseException:
                self._rollback()
                raise
        logger.debug("lucene %s: %d puts, %d deletes committed as seq %d in %.3f s", self.path, len(puts),
                     len(deletes), seq, time.perf_counter() - t0)

    def rebuild(self, documents: Iterable[Document], seq: int, *, batch: int = 1000) -> None:
        """Replace the whole content with ``documents`` in one commit (until it, readers see the old content)."""
        with self._lock:
            try:
                self._writer.deleteAll()
                for i, d in enumerate(documents):
                    doc = self._lucene_doc(d)
                    if doc is not None:
                        self._writer.addDocument(doc)
                    if i % batch == batch - 1:
                        logger.debug("lucene %s: %d documents added", self.path, i + 1)
                self._commit(seq)
            except BaseException:
                self._rollback()
                raise

    def expunge_deletes(self) -> None:
        """Merge every segment holding deleted versions (blocking), then commit: the statistics are exact again."""
        with self._lock:
            self._writer.forceMergeDeletes(True)
            self._commit(self._seq or 0)

    def force_merge(self, max_segments: int = 1) -> None:
        """Merge down to ``max_segments`` segments (blocking) and commit."""
        with self._lock:
            self._writer.forceMerge(int(max_segments), True)
            self._commit(self._seq or 0)

    def _commit(self, seq: int) -> None:
        data = self._j["HashMap"]()
        data.put("applied_seq", str(int(seq)))
        self._writer.setLiveCommitData(data.entrySet())
        self._writer.commit()
        self._seq = int(seq)

    def _rollback(self) -> None:
        """IndexWriter.rollback closes the writer: reopen it on the last commit."""
        try:
            self._writer.rollback()
        finally:
            self._open_writer()

    incremental = True  # a write changes only what it names

    def searchable(self):
        """This index, when it holds documents (None: nothing to search yet)."""
        return self if len(self) else None

    def close(self) -> None:
        """Close the writer (merges in flight finish first); idempotent."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        with LiveLuceneIndex._open_lock:
            if LiveLuceneIndex._open.get(self.path.resolve()) is self:
                del LiveLuceneIndex._open[self.path.resolve()]
