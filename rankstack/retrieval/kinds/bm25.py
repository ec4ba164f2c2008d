"""``bm25``: Lucene's BM25 with Pyserini's BEIR defaults (``k1=0.9, b=0.4``).

The stored index is a Lucene index (the index of record, Pyserini-compatible). Two engines search it and give the
same runs: ``lucene`` (Pyserini's searcher, through the JVM) and ``matrix`` (Lucene's BM25 computed from a score
matrix of the same postings, :class:`~rankstack.index.bm25_matrix.BM25Matrix`, checked against the Lucene index when
built). ``engine=auto`` takes the matrix wherever the index does not change (eval, folders, shards) and Lucene where it
changes with every write (a service collection). Shards hold matrices only, scored with the collection's statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.kernels.bm25_scores import lowered_scores
from rankstack.retrieval.kinds.base import RetrievalKind, Settings
from rankstack.spec import Item, Option

logger = logging.getLogger(__name__)

__all__ = ["BM25Kind", "BM25Settings", "BM25", "ENGINES"]

ENGINES = ("auto", "lucene", "matrix")


@dataclass(frozen=True)
class BM25Settings(Settings):
    kind: str = "bm25"
    k1: float = 0.9
    b: float = 0.4
    threads: int | None = None
    engine: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "index_key", "bm25")
        object.__setattr__(self, "key", f"bm25:{self.k1}:{self.b}:{self.threads}:{self.engine}")


def _is_matrix(index) -> bool:
    return hasattr(index, "search_arrays") or hasattr(index, "bm25_topk")


class BM25Kind(RetrievalKind):
    name = "bm25"
    summary = "Lucene's BM25 (Pyserini's runs), on the JVM or as a score matrix"
    saved_kinds = ("lucene-bm25", "bm25-matrix")
    stats_labels = ("bm25",)
    self_durable = True
    options = {
        "k1": Option(0.9, doc="term frequency saturation"),
        "b": Option(0.4, doc="length normalisation"),
        "threads": Option(type=int, low=1, doc="threads for a batch of queries"),
        "engine": Option("auto", choices=ENGINES,
                         doc="auto: the matrix where the index does not change, Lucene where it does"),
    }

    def settings(self, item: Item, defaults: Mapping[str, Any]) -> BM25Settings:
        return BM25Settings(k1=item.get("k1", defaults.get("k1", 0.9)), b=item.get("b", defaults.get("b", 0.4)),
                            threads=item.get("threads", defaults.get("threads")), engine=item.get("engine", "auto"))

    def defaults_of(self, index) -> dict[str, Any]:
        return {}

    def folder(self, settings, defaults) -> str:
        return "bm25"

    # ---- the stored index: Lucene --------------------------------------------------------------------------------

    def write(self, settings, documents, batch, meta, path: Path):
        from rankstack.index.lucene import LuceneIndex

        return LuceneIndex.build(list(documents), path, meta=meta, threads=settings.threads or 1)

    def load(self, settings, path: Path, models):
        from rankstack.index.registry import open_index

        return open_index(path)

    def matches(self, settings, index) -> str | None:
        return None

    # ---- the score matrix, derived from it ------------------------------------------------------------------------

    def derived_key(self, settings: BM25Settings, index, *, changing: bool = False) -> str | None:
        if _is_matrix(index):
            return None
        if settings.engine == "matrix" and changing:  # the matrix does not follow writes
            raise BadInput("bm25:engine=matrix serves indexes that do not change (rankstack eval/search, shards); a "
                           "collection's BM25 changes with every write and runs on Lucene: drop engine=")
        if settings.engine == "lucene" or changing:
            return None
        return "matrix"

    def derive(self, settings, index, meta: dict | None = None):
        from rankstack.index.bm25_matrix import BM25Matrix

        if index.docstore is None:
            raise BadInput(f"{index.path} stores no documents to build the BM25 matrix from; rebuild it with "
                           f"`rankstack index --kind bm25`, or search it with bm25:engine=lucene")
        matrix = BM25Matrix.build(iter(index.docstore), meta=meta)
        matrix.check_against(index)
        return matrix

    def load_derived(self, settings, path: Path):
        from rankstack.index.bm25_matrix import BM25Matrix

        return BM25Matrix.load(path)

    # ---- retrieval ----------------------------------------------------------------------------------------------

    def retriever(self, settings: BM25Settings, index, *, models, documents=None, derived=None, path=None):
        from rankstack.retrieval.bm25 import BM25MatrixRetriever, BM25Retriever

        matrix = derived if derived is not None else (index if _is_matrix(index) else None)
        if matrix is not None:
            return BM25MatrixRetriever(matrix, k1=settings.k1, b=settings.b, threads=settings.threads,
                                       documents=documents)
        return BM25Retriever(index, k1=settings.k1, b=settings.b, threads=settings.threads)

    # ---- the live index: Lucene, committed with every write ---------------------------------------------------

    def live(self, path: Path, mode: str = "incremental"):
        """The index a service collection keeps: a :class:`~rankstack.index.lucene_live.LiveLuceneIndex` written in
        place (``incremental``), or a Lucene index rebuilt from the log at every write (``rebuild``)."""
        from rankstack.index.jvm import import_pyserini

        # Pyserini's search module imports its encoders (torch, transformers, onnxruntime): seconds, paid at open,
        # not by the first search
        import_pyserini("pyserini.search.lucene")
        if mode == "rebuild":
            return RebuiltLucene(path)
        from rankstack.errors import IndexCorrupt
        from rankstack.index.lucene_live import LiveLuceneIndex

        try:
            return LiveLuceneIndex(path)
        except IndexCorrupt as exc:
            import shutil

            logger.warning("rebuilding bm25 at %s (%s)", path, exc)
            shutil.rmtree(path, ignore_errors=True)
            return LiveLuceneIndex(path)

    # ---- shards: score matrices under the collection's statistics -----------------------------------------------

    def shard_write(self, settings, documents, batch, meta, path: Path):
        from rankstack.index.bm25_matrix import BM25Matrix

        m = BM25Matrix.build(list(documents), meta=meta, show_progress=False)
        m.save(path)
        return m

    def shard_load(self, settings, path: Path):
        from rankstack.index.bm25_matrix import BM25Matrix

        return BM25Matrix.load(path)

    def shard_search(self, settings, index, queries, k, params):
        """Lucene's top ``k`` before Pyserini's rounding (raw float32 scores, ties to the earlier row): what merges
        across shards into Lucene's own order; :meth:`shard_finish` rounds once, after the merge."""
        k1, b = params.get("k1", settings.k1), params.get("b", settings.b)
        return [index.top_rows(terms, k, k1, b) for terms in queries]

    def shard_finish(self, settings, merged, docids):
        out = []
        for pos, raw in merged:
            if not len(pos):
                out.append((pos, raw))
                continue
            order = sorted(range(len(pos)), key=lambda i: (-raw[i], docids[pos[i]]))  # Anserini: ties by docid
            out.append((pos[order], lowered_scores(np.asarray(raw, np.float32)[order])))
        return out

    def stats(self, index) -> dict[str, Any]:
        return {"df": dict(zip(index.terms, np.diff(index.indptr).tolist())), "doc_count": index.doc_count,
                "sum_total_term_freq": index.sum_ttf}

    def use_stats(self, index, stats: dict[str, Any]) -> None:
        from rankstack.errors import IndexCorrupt

        df = stats["df"]
        try:
            local = np.array([df[t] for t in index.terms], dtype=np.int64)
        except KeyError:
            raise IndexCorrupt("a term of this shard is missing from the collection statistics; rebuild the sharded "
                               "index") from None
        index.use_collection_stats(local, stats["doc_count"], stats["sum_total_term_freq"])


class RebuiltLucene:
    """``bm25_updates: rebuild``: the collection's Lucene index rebuilt from the log at every write (exact
    statistics, at a cost that grows with the collection), without a copy of the documents. The same surface as a
    :class:`~rankstack.index.lucene_live.LiveLuceneIndex`: ``applied_seq``, ``write``, ``rebuild``, ``searchable``."""

    def __init__(self, path: Path):
        from rankstack.errors import IndexCorrupt, IndexNotFound
        from rankstack.index.lucene import LuceneIndex

        self.path = Path(path)
        try:
            self._index = LuceneIndex(self.path)
        except (IndexNotFound, IndexCorrupt):
            self._index = None
        self._docs: list = []

    @property
    def applied_seq(self) -> int | None:
        return None if self._index is None else self._index.params.get("applied_seq")

    def rebuild(self, documents, seq: int) -> None:
        from rankstack.index.lucene import LuceneIndex

        docs = list(documents)
        self._index = None if not docs else LuceneIndex.build(
            docs, self.path, meta={"applied_seq": seq}, show_progress=False, store_documents=False)

    incremental = False  # a write is a rebuild from the log

    def write(self, puts: Sequence, deletes: Sequence[str], seq: int) -> None:
        raise NotImplementedError("a rebuilt Lucene index takes writes as rebuilds from the log")

    def searchable(self):
        return self._index

    def close(self) -> None:
        pass


BM25 = BM25Kind()
