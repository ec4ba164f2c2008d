"""Persistent BM25 inverted index on Lucene, built through Pyserini (Pyserini's default English analyzer)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from rankstack._atomic import atomic_dir, write_json
from rankstack._progress import progress_enabled
from rankstack.errors import IndexCorrupt
from rankstack.index.base import checked_corpus, read_params
from rankstack.index.docstore import DocStore
from rankstack.index.jvm import import_pyserini
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["LuceneIndex", "open_lucene_dir"]


def open_lucene_dir(path: str | os.PathLike, kind: str, version: int) -> tuple[Path, dict]:
    """A RankStack folder around a Lucene index (``lucene/`` + ``params.json`` of ``kind``), checked."""
    path = Path(path)
    params = read_params(path, kind, version)
    if not (path / "lucene").is_dir():
        raise IndexCorrupt(f"{path}: the lucene/ folder is missing; rebuild the index")
    return path, params


class LuceneIndex:
    """A directory holding ``lucene/`` (the Lucene index), ``params.json`` and, unless built with
    ``store_documents=False``, a :class:`DocStore` of the documents (``docstore`` is then None: the service keeps
    its documents once, in its own log).

    Documents are indexed "flat": title and text joined into one ``contents`` field, as Pyserini's BEIR flat
    indexes do. Lucene itself stores no text (Anserini's indexer keeps neither raw nor contents fields here).
    """

    KIND = "lucene-bm25"
    FORMAT_VERSION = 1

    def __init__(self, path: str | os.PathLike):
        self.path, self.params = open_lucene_dir(path, self.KIND, self.FORMAT_VERSION)
        self.docstore = DocStore(self.path) if self.params.get("documents_stored", True) else None
        if self.docstore is not None and len(self.docstore) != self.params["num_docs"]:
            raise IndexCorrupt(f"{self.path}: params say {self.params['num_docs']} documents, store holds "
                               f"{len(self.docstore)}; rebuild the index")

    @property
    def lucene_dir(self) -> Path:
        return self.path / "lucene"

    def __len__(self) -> int:
        return self.params["num_docs"]

    @classmethod
    def build(cls, documents: Iterable[Document], path: str | os.PathLike, *, threads: int = 1,
              batch_size: int = 1000, show_progress: bool | None = None, meta: dict | None = None,
              store_documents: bool = True) -> LuceneIndex:
        """Index ``documents`` into ``path`` atomically (an existing index there is replaced only on success)."""
        lucene = import_pyserini("pyserini.index.lucene")
        docs = checked_corpus(documents, "an index")
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            writer = lucene.LuceneIndexer(str(tmp / "lucene"), threads=threads)
            try:
                bar = tqdm(total=len(docs), desc="index bm25", unit=" docs", disable=not progress_enabled(show_progress))
                for i in range(0, len(docs), batch_size):
                    chunk = docs[i:i + batch_size]
                    writer.add_batch_raw([json.dumps({"id": d.docid, "contents": d.contents}) for d in chunk])
                    bar.update(len(chunk))
                bar.close()
            finally:
                writer.close()
            if store_documents:
                DocStore.write(tmp, docs)
            write_json(tmp / "params.json", {
                "kind": cls.KIND, "format_version": cls.FORMAT_VERSION, "num_docs": len(docs),
                "documents_stored": store_documents,
                "fields": "contents = title + ' ' + text", "analyzer": "pyserini default (English, Porter, stopwords)",
                **(meta or {}),
            })
        logger.info("indexed %d documents into %s in %.1f s", len(docs), path, time.perf_counter() - t0)
        return cls(path)
