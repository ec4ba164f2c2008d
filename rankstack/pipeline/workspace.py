"""Resources for one BEIR-style dataset: its corpus, and indexes built on first use and cached on disk.

Indexes live under ``<root>/<dataset>/``: ``bm25`` (Lucene), ``splade-<vectors>`` (learned-sparse impacts) and
``splade-<vectors>-lucene`` (their Lucene impact index), ``dense-<vectors>`` (the exact float index of one
encoder's document vectors) and ``dense-<vectors>-<index spec>`` (a compressed index built from those vectors, so a
new index kind never re-encodes the corpus). Each records a fingerprint of the corpus and is rebuilt only when the
corpus (or the encoder) changes. ``rankstack eval`` and ``rankstack search --dataset`` share one root, so the same
spec finds the same indexes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Mapping

from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound
from rankstack.pipeline.resources import DenseSettings, Resources, SparseSettings, slug
from rankstack.rerank.factory import ModelCache
from rankstack.retrieval.base import Retriever
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["DatasetWorkspace", "corpus_fingerprint", "DEFAULT_INDEX_ROOT"]

DEFAULT_INDEX_ROOT = ".rankstack-cache/indexes"


def corpus_fingerprint(corpus: Mapping[str, object]) -> str:
    h = hashlib.sha1()
    for docid, doc in corpus.items():
        h.update(docid.encode())
        h.update(b"\0")
        h.update(doc.contents.encode())
        h.update(b"\1")
    return h.hexdigest()


class DatasetWorkspace(Resources):
    """Builds or reopens the indexes of ``dataset`` (anything with ``name`` and a ``corpus`` mapping) under
    ``root``. ``model``: the encoder of ``dense`` items that name none; ``k1``/``b``: BM25's parameters where a
    ``bm25`` item sets none. ``stats`` records build times (``index_seconds``, ``encode_docs_per_s``) per index."""

    def __init__(self, dataset, root: str | Path = DEFAULT_INDEX_ROOT, *, model: str = DEFAULT_DENSE_MODEL,
                 k1: float = 0.9, b: float = 0.4, threads: int | None = None, models: ModelCache | None = None):
        super().__init__(models)
        if not getattr(dataset, "corpus", None):
            raise BadInput("the dataset has no documents to index")
        self.dataset = dataset
        self.root = Path(root) / dataset.name
        self.default_model = model
        self.k1, self.b, self.threads = k1, b, threads
        self.documents = dataset.corpus
        self.fingerprint = corpus_fingerprint(dataset.corpus)
        self.stats: dict[str, dict[str, float]] = {}
        self._objects: dict[str, object] = {}
        self._build_lock = threading.RLock()

    def _cached(self, key: str, make):
        with self._build_lock:
            if key not in self._objects:
                self._objects[key] = make()
            return self._objects[key]

    # -- retrievers --
    def retriever(self, item: Item | str) -> Retriever:
        from rankstack.pipeline.spec import retriever_item

        item = retriever_item(item)
        if item.kind == "bm25":
            from rankstack.retrieval.bm25 import BM25Retriever

            k1, b, threads = item.get("k1", self.k1), item.get("b", self.b), item.get("threads", self.threads)
            if item.get("engine", "lucene") == "matrix":
                from rankstack.retrieval.bm25 import BM25MatrixRetriever

                return self._cached(f"bm25m:{k1}:{b}:{threads}", lambda: BM25MatrixRetriever(
                    self.bm25_matrix(), k1=k1, b=b, threads=threads))
            return self._cached(f"bm25:{k1}:{b}:{threads}",
                                lambda: BM25Retriever(self.lucene(), k1=k1, b=b, threads=threads))
        if item.kind == "dense":
            from rankstack.retrieval.dense import DenseRetriever

            s = DenseSettings.of(item, self.default_model)
            return self._cached(f"dense:{s.index_key}:{s.search_params}:{s.encoder_options}:{s.device}",
                                lambda: DenseRetriever(s.encoder(self.models), self.vector_index(s),
                                                       search_params=s.search_params, device=s.device))
        if item.kind == "splade":
            s = SparseSettings.of(item)
            return self._cached(f"splade:{s}", lambda: s.retriever(
                self.models, self.sparse_index(s), lucene_path=self.root / f"splade-{slug(s.vectors_key)}-lucene"))
        if item.kind in ("maxsim", "muvera", "plaid"):
            return self._cached(f"mv:{item}", lambda: self.multivector_retriever(item))
        raise BadInput(f"no retriever {item.kind!r} for a dataset workspace")

    def multivector_retriever(self, item: Item) -> Retriever:
        from rankstack.retrieval.multivector import MultiVectorSettings

        s = MultiVectorSettings.of(item)
        return s.retriever(s.encoder(self.models), self.token_index(s),
                           self.derived_index(s) if s.derived_key else None)

    # -- indexes --
    def lucene(self):
        """The BM25 index of the corpus (built on first use)."""
        from rankstack.index.lucene import LuceneIndex

        def make():
            path = self.root / "bm25"
            try:
                index = LuceneIndex(path)
                if index.params.get("corpus_sha1") != self.fingerprint:
                    raise IndexCorrupt("corpus changed")
                logger.info("reusing BM25 index %s", path)
                return index
            except (IndexNotFound, IndexCorrupt):
                t0 = time.perf_counter()
                index = LuceneIndex.build(self.dataset.corpus.values(), path, meta={"corpus_sha1": self.fingerprint})
                secs = time.perf_counter() - t0
                self.stats.setdefault("bm25", {}).update(index_seconds=secs, index_docs_per_s=len(index) / secs)
                return index

        return self._cached("lucene", make)

    def bm25_matrix(self):
        """Lucene's BM25 postings as a score matrix (``bm25:engine=matrix``), checked against the Lucene index."""
        from rankstack.index.bm25_matrix import BM25Matrix

        def make():
            lucene, path = self.lucene(), self.root / "bm25-matrix"
            try:
                m = BM25Matrix.load(path)
                if m.meta.get("corpus_sha1") != self.fingerprint:
                    raise IndexCorrupt("corpus changed")
                return m
            except (IndexNotFound, IndexCorrupt):
                m = BM25Matrix.build(self.dataset.corpus.values(), meta={"corpus_sha1": self.fingerprint})
                m.check_against(lucene)
                m.save(path)
                return m

        return self._cached("bm25-matrix", make)

    def _encoded(self, label: str, path: Path, vectors_key: str, load, build):
        """Reopen the index at ``path`` if it holds this corpus under ``vectors_key``; else encode the corpus with
        ``build(docs, meta)``, save, and record the build time and encoding throughput under ``label``."""
        index = self._reopen(label, path, load, "vectors", vectors_key)
        if index is not None:
            return index
        docs = list(self.dataset.corpus.values())
        t0 = time.perf_counter()
        index = build(docs, {"corpus_sha1": self.fingerprint, "vectors": vectors_key})
        secs = time.perf_counter() - t0
        index.save(path)
        self.stats.setdefault(label, {}).update(index_seconds=secs, encode_docs_per_s=len(docs) / secs)
        return index

    def flat_index(self, s: DenseSettings):
        """The exact index of ``s``'s document vectors (encodes the corpus on first use)."""
        from rankstack.index.faiss_flat import DenseFlatIndex
        from rankstack.retrieval.dense import build_dense_index

        return self._cached(f"flat:{s.vectors_key}", lambda: self._encoded(
            "dense", self.root / f"dense-{slug(s.vectors_key)}", s.vectors_key, DenseFlatIndex.load,
            lambda docs, meta: build_dense_index(s.encoder(self.models), docs, meta=meta)))

    def sparse_index(self, s: SparseSettings):
        """The learned-sparse impacts of the corpus under ``s``'s encoder (encodes the corpus on first use)."""
        from rankstack.index.sparse import SparseIndex
        from rankstack.retrieval.sparse import build_sparse_index

        return self._cached(f"sparse:{s.vectors_key}", lambda: self._encoded(
            "splade", self.root / f"splade-{slug(s.vectors_key)}", s.vectors_key, SparseIndex.load,
            lambda docs, meta: build_sparse_index(s.encoder(self.models), docs, meta=meta)))

    def token_index(self, s):
        """The token vectors of the corpus under ``s``'s token encoder (encodes the corpus on first use)."""
        from rankstack.index.multivector import MultiVectorIndex
        from rankstack.retrieval.multivector import build_token_index

        return self._cached(f"tokens:{s.tokens_key}", lambda: self._encoded(
            "multivector", self.root / f"multivector-{slug(s.tokens_key)}", s.tokens_key, MultiVectorIndex.load,
            lambda docs, meta: build_token_index(s.encoder(self.models), docs, meta=meta)))

    def token_index_for(self, encoder):
        from rankstack.retrieval.multivector import MultiVectorSettings

        opts = {} if encoder.document_length == encoder.model.document_length else {
            "document_length": encoder.document_length}
        s = MultiVectorSettings("maxsim", encoder.model_name, opts)
        return self.token_index(s)

    def _derived(self, label: str, path: Path, key: str, load, build):
        """An index built from another one (no encoding): reopened when its meta records ``key``."""
        index = self._reopen(label, path, load, "derived_key", key)
        if index is not None:
            return index
        t0 = time.perf_counter()
        build({"corpus_sha1": self.fingerprint, "derived_key": key}).save(path)
        self.stats.setdefault(label, {}).update(index_seconds=time.perf_counter() - t0)
        return load(path)

    def _reopen(self, label: str, path: Path, load, field: str, key: str):
        """The index at ``path`` if it holds this corpus with ``meta[field] == key``; else None (to rebuild)."""
        try:
            index = load(path)
        except (IndexNotFound, IndexCorrupt):
            return None
        if index.meta.get("corpus_sha1") != self.fingerprint or index.meta.get(field) != key:
            return None
        logger.info("reusing %s index %s", label, path)
        return index

    def derived_index(self, s):
        """The index a ``muvera`` or ``plaid`` item searches besides the token vectors (MUVERA's FDEs in the
        single-vector index it names; PLAID's codes), built from the corpus's token index and cached on disk."""
        from rankstack.index.multivector import PlaidIndex
        from rankstack.index.registry import load_vector_index

        tokens = self.token_index(s)
        key = f"{s.tokens_key}|{s.derived_key}"
        return self._cached(f"{s.kind}:{key}", lambda: self._derived(
            s.kind, self.root / f"{s.kind}-{slug(key)}", key,
            load_vector_index if s.kind == "muvera" else PlaidIndex.load, lambda meta: s.derive(tokens, meta=meta)))

    def vector_index(self, s: DenseSettings):
        """The index ``s`` asks for: the exact one, or a compressed one built from its vectors."""
        flat = self.flat_index(s)
        if s.index.kind == "flat":
            return flat
        from rankstack.index.registry import build_vector_index, load_vector_index

        def make():
            path = self.root / f"dense-{slug(s.vectors_key)}-{slug(s.index.build_key(), 32)}"
            try:
                index = load_vector_index(path, dim=flat.dim)
                if (index.meta.get("corpus_sha1") != self.fingerprint
                        or index.meta.get("index_key") != s.index_key):
                    raise IndexCorrupt("corpus, encoder or index spec changed")
                logger.info("reusing %s index %s", s.index.kind, path)
                return index
            except (IndexNotFound, IndexCorrupt):
                t0 = time.perf_counter()
                index = build_vector_index(s.index, flat.docids, flat.vectors(),
                                           meta={**flat.meta, "index_key": s.index_key})
                index.save(path)
                # reopen: a saved compressed index serves its rescoring tier from the file, as it will next time
                index = load_vector_index(path, dim=flat.dim)
                self.stats.setdefault(f"dense:{s.index.build_key()}", {}).update(
                    index_seconds=time.perf_counter() - t0)
                return index

        return self._cached(f"index:{s.index_key}", make)
