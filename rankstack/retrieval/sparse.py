"""Learned sparse retrieval: a sparse encoder over a :class:`~rankstack.index.sparse.SparseIndex`, searched by one
of three engines.

- ``scipy`` (default): exact integer dot products over the CSR impacts; follows every add/remove at once.
- ``lucene``: Anserini's impact searcher over a Lucene impact index of the same impacts (Pyserini's way of
  serving SPLADE; same integer scores, so the same rankings up to ties).
- ``seismic``: Seismic (Bruch et al., SIGIR 2024), approximate: clustered, pruned posting lists with block
  summaries. ``n_postings``, ``summary_energy`` steer the build; ``query_cut``, ``heap_factor`` the search. Writes
  do not rebuild it: documents written since its build are scored exactly beside it, and a new index is merged
  in the background once they pass a tenth of the collection.

Queries are encoded by the model (``query="model"``, SPLADE) or only tokenized and weighted by the index's IDF
(``query="idf"``, inference-free).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.index.sparse import DEFAULT_SCALE, SparseIndex
from rankstack.index.sparse_seismic import SeismicEngine
from rankstack.records import Document, Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries
from rankstack.retrieval.sparse_encoders import QUERY_MODES

logger = logging.getLogger(__name__)

__all__ = ["SparseRetriever", "build_sparse_index", "ENGINES", "SEISMIC_DEFAULTS"]

ENGINES = ("scipy", "lucene", "seismic")
# chosen on NFCorpus's dev queries (the first setting of a grid with Recall@10 >= 0.99 against exact search,
# 0.990 there), never on reported queries: benchmarks/sparse_engines.py
SEISMIC_DEFAULTS = {"n_postings": 500, "summary_energy": 0.4, "query_cut": 32, "heap_factor": 0.7}


def build_sparse_index(encoder, documents: Sequence[Document], *, scale: float = DEFAULT_SCALE,
                       meta: dict | None = None) -> SparseIndex:
    """Encode ``documents`` (with a progress bar) into a new in-memory :class:`SparseIndex`; ``save()`` it."""
    t0 = time.perf_counter()
    weights, tokens = encoder.encode_documents(documents, with_tokens=True)
    secs = time.perf_counter() - t0
    info = {"model": encoder.model_name, "max_seq_length": encoder.max_seq_length, "encode_seconds": round(secs, 3),
            "truncated_documents": encoder.truncated, **(meta or {})}
    index = SparseIndex(encoder.vocab, fingerprint=encoder.fingerprint, scale=scale, meta=info)
    index.add([d.docid for d in documents], weights, tokens)
    logger.info("sparse-encoded %d documents in %.1f s (%.1f docs/s)", len(documents), secs,
                len(documents) / max(secs, 1e-9))
    return index


class SparseRetriever(Retriever):
    """Sparse-encode queries (or weight their tokens by IDF), then search ``index`` with ``engine``.

    ``lucene_path``: where the Lucene impact index of ``index`` lives or is built (required by engine ``lucene``,
    rebuilt when the impacts change). ``documents``: where pipelines find candidate texts.
    """

    kind = "splade"

    def __init__(self, encoder, index: SparseIndex, *, engine: str = "scipy", query: str = "model",
                 lucene_path: str | Path | None = None, threads: int | None = None,
                 documents=None, **seismic_params):
        if not (hasattr(index, "search") and hasattr(index, "quantize_queries")):
            raise TypeError(f"SparseRetriever needs a SparseIndex (or a sharded one), got {type(index).__name__}")
        if engine not in ENGINES:
            raise BadInput(f"engine must be one of {ENGINES}, got {engine!r}")
        unknown = set(seismic_params) - set(SEISMIC_DEFAULTS)
        if unknown:
            raise BadInput(f"unknown sparse retriever options {sorted(unknown)}; Seismic takes "
                           f"{sorted(SEISMIC_DEFAULTS)}")
        if engine == "lucene" and lucene_path is None:
            raise BadInput("engine=lucene needs the folder of the Lucene impact index (lucene_path)")
        index.check_encoder(encoder)
        self.encoder, self.index, self.engine = encoder, index, engine
        if query not in QUERY_MODES:
            raise BadInput(f"query must be one of {', '.join(QUERY_MODES)}, got {query!r}")
        self.query_mode = query
        self.lucene_path = Path(lucene_path) if lucene_path is not None else None
        self.threads = threads or 1
        self.seismic_params = {**SEISMIC_DEFAULTS, **seismic_params}
        self.documents = documents
        self._engine_obj = None
        self._lock = threading.Lock()
        self._merging: threading.Thread | None = None  # a background Seismic build
        self._delta = None  # Seismic: (engine, index version, stale, fresh docids, fresh impacts transposed)
        self.seismic_builds = 0
        short = encoder.model_name.rstrip("/").split("/")[-1]
        self.name = f"splade({short},{'idf' if self.query_mode == 'idf' else 'model'} queries,{engine})"

    # -- engines --
    # an engine this far behind (changed documents / live documents) is rebuilt rather than updated in place
    LUCENE_REBUILD_FRACTION = 0.25

    def _lucene(self):
        """The Lucene impact index of the current impacts. Opened from ``lucene_path``; if its commit records an
        earlier signature of this index, it is updated in place with the documents written since (the index's
        write journal says which); it is rebuilt only when it holds other documents or is far behind."""
        from rankstack.errors import IndexCorrupt, IndexNotFound
        from rankstack.index.lucene_impact import LuceneImpactIndex

        with self._lock:
            sig = self._source_version()
            eng = self._engine_obj
            if eng is not None and eng.source_version != sig:
                eng.refresh()  # another retriever over the same folder may have written to it
            if eng is None:
                try:
                    eng = LuceneImpactIndex(self.lucene_path)
                except (IndexNotFound, IndexCorrupt):
                    eng = None
            if eng is not None and eng.source_version != sig:
                at = self.index.version_of(eng.source_version)  # None: not this index's documents
                changed = None if at is None else self.index.changed_since(at)
                if changed is not None and len(changed) <= self.LUCENE_REBUILD_FRACTION * max(len(self.index), 1):
                    puts = [(d, self.index.doc_vector(d)) for d in sorted(changed) if d in self.index]
                    eng.update(puts, sorted(d for d in changed if d not in self.index), sig)
                else:
                    eng = None
            if eng is None:
                eng = LuceneImpactIndex.build(self.index, self.lucene_path, meta={"source_version": sig})
            self._engine_obj = eng
            return eng

    def _source_version(self) -> str:
        return self.index.signature()

    # Seismic follows writes LSM-style: the documents changed since its index was built (the sparse index's write
    # journal) are left out of its results and scored exactly beside it; once they pass this fraction of the
    # collection, a new Seismic index is built from a snapshot in a background thread and swapped in when done, so
    # no search waits for a build after the first
    SEISMIC_MERGE_FRACTION = 0.1

    def _seismic_state(self):
        """``(engine, stale, fresh_ids, fresh_t)``: the Seismic index, its documents changed since it was built
        (left out of its results), and the live changed documents with their impacts transposed (``[vocab, n]``,
        int64) for exact scoring. Called under the index's read lock (the service's), so the index is stable."""
        import scipy.sparse as sp

        with self._lock:
            eng = self._engine_obj
            changed = None if eng is None else self.index.changed_since(eng.version)
            if changed is None:  # first search, or the journal no longer reaches the engine's version: build now
                eng = self._engine_obj = self._build_seismic(*self.index.snapshot(), self.index.version)
                self.seismic_builds += 1
                changed = set()
            elif len(changed) > self.SEISMIC_MERGE_FRACTION * max(len(self.index), 1) and self._merging is None:
                self._start_merge()
            version = self.index.version
            if self._delta is None or self._delta[0] is not eng or self._delta[1] != version:
                fresh = sorted(d for d in changed if d in self.index)
                m = self.index.rows_of(fresh).T.tocsr().astype(np.int64) if fresh else sp.csr_matrix((0, 0))
                self._delta = (eng, version, frozenset(changed & eng.docids), fresh, m)
            _, _, stale, fresh, m = self._delta
            return eng, stale, fresh, m

    def seismic_engine(self) -> SeismicEngine:
        """The Seismic index this retriever searches (built on first use; its ``index`` is Seismic's own object,
        for its space report), with ``search(query_dicts, k, query_cut, heap_factor, threads)``."""
        return self._seismic_state()[0]

    def _build_seismic(self, docids, impacts, version: int) -> SeismicEngine:
        p = self.seismic_params
        return SeismicEngine(docids, impacts, self.index.vocab, version, p["n_postings"], p["summary_energy"],
                        self.threads)

    def _start_merge(self) -> None:
        """Build the next Seismic index from a snapshot taken now, in a thread; swap it in when it is done."""
        docids, impacts = self.index.snapshot()
        version = self.index.version
        logger.info("merging %d documents into a new Seismic index in the background", len(docids))

        def merge():
            try:
                new = self._build_seismic(docids, impacts, version)
                with self._lock:
                    if self._engine_obj is None or self._engine_obj.version < new.version:
                        self._engine_obj = new
                        self.seismic_builds += 1
            except Exception:  # noqa: BLE001 - the old index and its delta keep serving; the next search retries
                logger.exception("the background Seismic merge failed; searches go on over the previous index")
            finally:
                with self._lock:
                    self._merging = None

        self._merging = threading.Thread(target=merge, name="seismic-merge", daemon=True)
        self._merging.start()

    def wait_for_merge(self, timeout: float | None = None) -> None:
        """Block until a background Seismic merge (if one runs) has finished."""
        t = self._merging
        if t is not None:
            t.join(timeout)

    def _seismic_search(self, q, k: int) -> list[list[tuple[str, float]]]:
        from rankstack.index.lucene_impact import query_dicts

        p = self.seismic_params
        eng, stale, fresh, m = self._seismic_state()
        base = eng.search(query_dicts(self.index, q), k + len(stale), p["query_cut"], p["heap_factor"], self.threads)
        if not stale and not fresh:
            return [ps[:k] for ps in base]
        exact = (q.astype(np.int64) @ m).toarray() if fresh else np.zeros((q.shape[0], 0))
        out = []
        for ps, row in zip(base, exact):
            hits = [(d, s) for d, s in ps if d not in stale]
            top = np.flatnonzero(row > 0)
            if top.size > k:
                top = top[np.argpartition(-row[top], k - 1)[:k]]
            hits += [(fresh[i], float(row[i])) for i in top]
            hits.sort(key=lambda h: (h[1], h[0]), reverse=True)
            out.append(hits[:k])
        return out

    # -- search --
    def encode(self, texts: Sequence[str]):
        """Queries as the index's integer impacts (int CSR ``[n, vocab]``)."""
        if self.query_mode == "idf":
            return self.index.idf_queries(self.encoder.query_tokens(texts))
        return self.index.quantize_queries(self.encoder.encode_queries(texts))

    def search_impacts(self, q, k: int) -> list[list[tuple[str, float]]]:
        """The top ``k`` (docid, score) per query of already encoded queries (int CSR impacts, :meth:`encode`), by
        this retriever's engine: the one surface the three engines share (scipy's exact products, Lucene's impact
        searcher, Seismic with its exact delta)."""
        from rankstack.index.lucene_impact import query_dicts

        if self.engine == "scipy":
            return self.index.docid_pairs(self.index.search(q, k))
        if self.engine == "lucene":
            return self._lucene().search(query_dicts(self.index, q), k, threads=self.threads)
        return self._seismic_search(q, k)

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        pairs = self.search_impacts(self.encode([x.text for x in queries]), k)
        return [Ranking.from_arrays(x, [d for d, _ in ps], [s for _, s in ps])
                for x, ps in zip(queries, pairs)]
