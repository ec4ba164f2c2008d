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
from rankstack.models import ModelCache
from rankstack.pipeline.resources import DenseSettings, MultiVectorSettings, Resources, SparseSettings
from rankstack.retrieval import kinds
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL
from rankstack.retrieval.kinds import RetrievalKind, Settings, slug

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
        # a dataset's queries repeat across the pipelines of one run: each is encoded once per encoder
        super().__init__(models if models is not None else ModelCache(remember_queries=True))
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

    def defaults(self, kind) -> dict:
        return {"model": self.default_model, "k1": self.k1, "b": self.b, "threads": self.threads}

    # -- indexes --
    def index(self, kind: RetrievalKind, settings: Settings) -> tuple[object, Path]:
        """The stored index of ``settings`` over the corpus: reopened from ``root`` when it holds this corpus built
        that way, else built (encoding the corpus, or from another index of the kind without encoding) and saved."""
        path = self.root / kind.folder(settings, self.defaults(kind))
        return self._cached(f"index:{kind.name}:{settings.index_key}", lambda: self._stored(kind, settings, path)), path

    def _stored(self, kind: RetrievalKind, settings: Settings, path: Path):
        label = kind.stats_labels[0] if kind.stats_labels else kind.name
        index = self._reopen(label, path, lambda: kind.load(settings, path, self.models),
                             lambda ix: kind.matches(settings, ix))
        if index is not None:
            return index
        meta = {"corpus_sha1": self.fingerprint, "index_key": settings.index_key}
        source = kind.source(settings)
        t0 = time.perf_counter()
        if source is not None:  # e.g. a compressed dense index from the exact one's vectors: no encoding
            base, _ = self.index(kind, source)
            index = kind.build_from(settings, base, meta, path)
            label = f"{label}:{settings.index.build_key()}" if hasattr(settings, "index") else label
            self.stats.setdefault(label, {}).update(index_seconds=time.perf_counter() - t0)
            return index
        docs = list(self.dataset.corpus.values())
        index = kind.build(settings, self.models, docs, meta, path)
        secs = time.perf_counter() - t0
        self.stats.setdefault(label, {}).update(index_seconds=secs, index_docs_per_s=len(docs) / secs,
                                                encode_docs_per_s=len(docs) / secs)
        return index

    def derived(self, kind: RetrievalKind, settings: Settings, index, key: str, path: Path | None):
        """The index ``settings`` derives from ``index``, reopened from disk when it was derived from this corpus
        with the same key, else built and saved (MUVERA's encodings, PLAID's k-means: minutes on a large corpus)."""
        where = self.root / f"{kind.folder(settings, self.defaults(kind))}-{slug(key, 32)}"

        def make():
            found = self._reopen(kind.name, where, lambda: kind.load_derived(settings, where),
                                 lambda ix: None if (getattr(ix, "meta", None) or {}).get("derived_key") == key
                                 else "derived otherwise")
            if found is not None:
                return found
            t0 = time.perf_counter()
            kind.derive(settings, index, meta={"corpus_sha1": self.fingerprint, "derived_key": key}).save(where)
            label = kind.stats_labels[-1] if kind.stats_labels else kind.name
            self.stats.setdefault(label, {}).update(index_seconds=time.perf_counter() - t0)
            return kind.load_derived(settings, where)

        return self._cached(f"derived:{kind.name}:{key}", make)

    def _reopen(self, label: str, path: Path, load, mismatch):
        """The index at ``path`` if it holds this corpus and ``mismatch(index)`` finds nothing wrong; else None."""
        try:
            index = load()
        except (IndexNotFound, IndexCorrupt):
            return None
        meta = getattr(index, "meta", None)
        if meta is None:
            meta = getattr(index, "params", {})
        if meta.get("corpus_sha1") != self.fingerprint or mismatch(index) is not None:
            return None
        logger.info("reusing %s index %s", label, path)
        return index

    # -- named conveniences (benchmarks and tests) --
    def lucene(self):
        """The Lucene BM25 index of the corpus (built on first use)."""
        return self.index(kinds.get("bm25"), kinds.settings_of("bm25:engine=lucene"))[0]

    def bm25_matrix(self):
        """Lucene's BM25 postings as a score matrix (``bm25:engine=matrix``), checked against the Lucene index."""
        kind = kinds.get("bm25")
        s = kinds.settings_of("bm25:engine=matrix")
        index, path = self.index(kind, s)
        return self.derived(kind, s, index, kind.derived_key(s, index), path)

    def vector_index(self, s: DenseSettings):
        """The index a dense item asks for: the exact one, or a compressed one built from its vectors."""
        return self.index(kinds.get("dense"), s)[0]

    def flat_index(self, s: DenseSettings):
        """The exact index of ``s``'s document vectors (encodes the corpus on first use)."""
        kind = kinds.get("dense")
        return self.index(kind, kind.source(s) or s)[0]

    def sparse_index(self, s: SparseSettings):
        """The learned-sparse impacts of the corpus under ``s``'s encoder (encodes the corpus on first use)."""
        return self.index(kinds.get("splade"), s)[0]

    def token_index(self, s: MultiVectorSettings):
        """The token vectors of the corpus under ``s``'s token encoder (encodes the corpus on first use)."""
        return self.index(kinds.get(s.kind), s)[0]

    def derived_index(self, s: MultiVectorSettings):
        """The index a ``muvera`` or ``plaid`` item searches besides the token vectors, built from the corpus's
        token index and cached on disk."""
        kind = kinds.get(s.kind)
        index, path = self.index(kind, s)
        return self.derived(kind, s, index, kind.derived_key(s, index), path)

    def token_index_for(self, encoder):
        opts = {} if encoder.document_length == encoder.model.document_length else {
            "document_length": encoder.document_length}
        return self.token_index(MultiVectorSettings(kind="maxsim", model=encoder.model_name, encoder_options=opts))
