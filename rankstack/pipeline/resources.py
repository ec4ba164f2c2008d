"""What a compiled pipeline draws on: indexes, encoders, rerankers and documents.

A :class:`Resources` turns spec items into objects: ``retriever(item)`` and ``reranker(item)``. Three kinds exist:
:class:`~rankstack.pipeline.workspace.DatasetWorkspace` (a BEIR dataset, indexes built once and cached on disk: what
``rankstack eval`` and ``rankstack search --dataset`` use), :class:`IndexDirs` (index folders built by ``rankstack
index``) and the service's :class:`~rankstack.service.collection.Collection` (indexes kept in step with its log).
"""

from __future__ import annotations

import hashlib
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rankstack.errors import BadInput
from rankstack.index.base import IndexSpec
from rankstack.records import Document
from rankstack.rerank.factory import ModelCache, RerankerSpec, build_reranker
from rankstack.retrieval.base import Retriever
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL, DOCUMENT_OPTIONS, ENCODER_OPTIONS
from rankstack.spec import Item

__all__ = ["Resources", "DenseSettings", "SparseSettings", "IndexDirs", "slug"]


def slug(text: str, keep: int = 48) -> str:
    """A file-system-safe name for ``text``: readable, plus a short hash so that different texts differ."""
    clean = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:keep]
    return f"{clean}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class DenseSettings:
    """A ``dense:...`` item resolved: the encoder, the index to build or find, and how to search it.

    ``vectors_key`` identifies the document vectors (model and the options that change them); ``index_key``
    adds the index's build-time spec. Two items with equal keys can share one index.
    """

    model: str
    encoder_options: dict[str, Any]
    index: IndexSpec
    device: str | None
    vectors_key: str = field(init=False)
    index_key: str = field(init=False)

    def __post_init__(self):
        doc = {k: self.encoder_options[k] for k in DOCUMENT_OPTIONS if k in self.encoder_options}
        doc = {k: v for k, v in doc.items() if v != ENCODER_OPTIONS.get(k)}
        vk = str(Item(self.model, tuple((k, str(v)) for k, v in sorted(doc.items()))))
        object.__setattr__(self, "vectors_key", vk)
        object.__setattr__(self, "index_key", f"{vk}|{self.index.build_key()}")

    @classmethod
    def of(cls, item: Item | str, default_model: str = DEFAULT_DENSE_MODEL) -> DenseSettings:
        from rankstack.pipeline.spec import retriever_item

        item = retriever_item(item)
        opts = {k: item.get(k) for k in ENCODER_OPTIONS if k != "device" and item.get(k) is not None}
        index = item.get("index")
        return cls(model=item.get("model") or default_model, encoder_options=opts,
                   index=IndexSpec.parse(index) if index is not None else IndexSpec("flat"),
                   device=item.get("device"))

    @property
    def search_params(self) -> dict[str, Any]:
        return self.index.search_params()

    def encoder(self, models: ModelCache):
        return models.encoder(self.model, **self.encoder_options)


@dataclass(frozen=True)
class SparseSettings:
    """A ``splade:...`` item resolved: the sparse encoder, the vectors it makes (``vectors_key``: model and
    truncation), and how to search them (query mode, engine, Seismic's parameters)."""

    model: str
    max_seq_length: int = 256
    batch_size: int = 32
    query: str = "model"
    engine: str = "scipy"
    device: str | None = None
    threads: int | None = None
    seismic: tuple = ()
    vectors_key: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "vectors_key", str(Item(self.model, (("max_seq_length", str(self.max_seq_length)),))))

    @classmethod
    def of(cls, item: Item | str, default_model: str | None = None) -> SparseSettings:
        from rankstack.pipeline.spec import retriever_item
        from rankstack.retrieval.sparse import SEISMIC_DEFAULTS
        from rankstack.retrieval.sparse_encoders import DEFAULT_SPARSE_MODEL

        item = retriever_item(item)
        g = item.get
        return cls(model=g("model") or default_model or DEFAULT_SPARSE_MODEL, max_seq_length=g("max_seq_length", 256),
                   batch_size=g("batch_size", 32), query=g("query", "model"), engine=g("engine", "scipy"),
                   device=g("device"), threads=g("threads"),
                   seismic=tuple((k, g(k)) for k in SEISMIC_DEFAULTS if g(k) is not None))

    def encoder(self, models: ModelCache):
        return models.sparse_encoder(self.model, max_seq_length=self.max_seq_length, batch_size=self.batch_size,
                                     device=self.device)

    def retriever(self, models: ModelCache, index, *, lucene_path=None, documents=None):
        from rankstack.retrieval.sparse import SparseRetriever

        return SparseRetriever(self.encoder(models), index, engine=self.engine, query=self.query,
                               lucene_path=lucene_path, threads=self.threads, documents=documents,
                               **dict(self.seismic))


class Resources(ABC):
    """Resolves spec items for :func:`~rankstack.pipeline.compile.compile_pipeline`.

    ``named_rerankers``: names that may stand for reranker specs (the service's ``[rerankers]``);
    ``default_model``: the encoder of ``dense`` items that name none; ``documents``: candidate texts for rerankers
    and filters.
    """

    models: ModelCache
    named_rerankers: Mapping[str, RerankerSpec] = {}
    default_model: str = DEFAULT_DENSE_MODEL
    documents: Mapping[str, Document] | None = None
    relevance_adapter: str | None = None
    """The adapter file that ``filter(0.5)`` (a relevance stage naming no adapter) uses."""

    def __init__(self, models: ModelCache | None = None):
        self.models = models or ModelCache()
        self._rerankers: dict[str, Any] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def retriever(self, item: Item) -> Retriever:
        """The retriever an item (``bm25:k1=1.2``, ``dense:index=(binary)``...) names, over this resource's index."""

    def reranker(self, item: Item | str) -> tuple[Any, int]:
        """The reranker an item names (a kind or a configured name) and its rerank depth. Rerankers are built once
        per spec and shared (an LLM's weights are shared through the model cache in any case)."""
        from rankstack.spec import parse_item

        item = parse_item(item, "reranker spec") if isinstance(item, str) else item
        spec = RerankerSpec.from_item(item, self.named_rerankers)
        key = str(RerankerSpec(spec.kind, spec.model, spec.options))
        with self._lock:
            if key not in self._rerankers:
                reranker = build_reranker(spec, self.models)
                if getattr(reranker, "wants_token_index", False) and getattr(reranker, "stored", False):
                    reranker.attach_index(self.token_index_for(reranker.encoder))
                self._rerankers[key] = reranker
            return self._rerankers[key], spec.stage_depth

    def token_index_for(self, encoder) -> Any:
        """The corpus's multi-vector index made by ``encoder`` (late-interaction rerankers score stored tokens from
        it), or None where these resources have none."""
        return None


    def relevance_filter(self, item: Item, upstream) -> Any:
        """The relevance filter stage an item names (``relevance:adapter=FILE,min=0.5``), checked against the
        pipeline ``upstream`` of it: an adapter fitted on other scores is refused."""
        from rankstack.rag.relevance import RelevanceFilter, RelevanceModel, score_key

        path = item.get("adapter") or self.relevance_adapter
        if not path:
            raise BadInput("a relevance filter needs a fitted adapter: name it (relevance:adapter=FILE,min=0.5) or set "
                           "the default (rankstack eval/search --relevance-adapter FILE; the service's collection key "
                           "relevance_adapter). Fit one with `rankstack relevance fit`")
        model = RelevanceModel.load(path)
        key = score_key(upstream)
        if model.pipeline != key:
            raise BadInput(f"relevance adapter {path} was fitted on the scores of {model.pipeline!r}, but here it "
                           f"follows {key!r}; fit one for this pipeline: rankstack relevance fit --pipeline "
                           f"\"{key}\" ...")
        encoder = self.models.encoder(model.encoder) if model.method == "adapter" else None
        return RelevanceFilter(model, min_relevance=item.get("min"), encoder=encoder)


class IndexDirs(Resources):
    """Index folders built by ``rankstack index`` (a Lucene BM25 index and/or vector indexes), for
    ``rankstack search --index DIR``. A ``dense`` item picks the vector index whose build spec matches its
    ``index=`` (or the only one), and encodes queries with the model recorded in that index."""

    def __init__(self, paths: Sequence[str | Path], models: ModelCache | None = None):
        from rankstack.index.lucene import LuceneIndex
        from rankstack.index.registry import open_index

        super().__init__(models)
        if not paths:
            raise BadInput("give at least one index folder (--index DIR)")
        from rankstack.index.sparse import SparseIndex

        self.lucene: LuceneIndex | None = None
        self.vectors: list = []
        self.sparse: list[tuple[Path, SparseIndex]] = []
        from rankstack.index.multivector import MultiVectorIndex, PlaidIndex

        self.multivector: MultiVectorIndex | None = None
        self.plaid: PlaidIndex | None = None
        self._derived: dict[str, Any] = {}
        for p in paths:
            index = open_index(p)
            if getattr(index, "KIND", None) == "sharded":
                raise BadInput(f"{p} is a sharded collection: search it on its own (--index {p}), through "
                               f"rankstack.retrieval.sharded.ShardedResources")
            if isinstance(index, (MultiVectorIndex, PlaidIndex)):
                attr = "multivector" if isinstance(index, MultiVectorIndex) else "plaid"
                if getattr(self, attr) is not None:
                    raise BadInput(f"two {index.kind} indexes given; give one")
                setattr(self, attr, index)
            elif isinstance(index, SparseIndex):
                self.sparse.append((Path(p), index))
            elif isinstance(index, LuceneIndex):
                if self.lucene is not None:
                    raise BadInput(f"two BM25 indexes given ({self.lucene.path} and {p}); give one")
                self.lucene = index
            else:
                self.vectors.append(index)
        self.documents = self.lucene.docstore if self.lucene is not None else None
        self.paths = [str(p) for p in paths]

    def default_spec(self) -> str:
        """The natural pipeline over these folders: the one index's retriever, or RRF of all of them."""
        parts = (["bm25"] if self.lucene is not None else []) + [
            f"dense:index=({v.spec.build_key()})" for v in self.vectors] + ["splade"] * bool(self.sparse) + [
            "maxsim"] * (self.multivector is not None) + ["plaid"] * (self.plaid is not None)
        return parts[0] if len(parts) == 1 else "rrf(" + ", ".join(parts) + ")"

    def retriever(self, item: Item) -> Retriever:
        from rankstack.pipeline.spec import retriever_item

        item = retriever_item(item)
        if item.kind == "bm25":
            from rankstack.retrieval.bm25 import BM25Retriever

            if self.lucene is None:
                raise BadInput(f"the pipeline uses bm25 but none of {self.paths} is a BM25 index")
            if item.get("engine", "lucene") == "matrix":
                from rankstack.index.bm25_matrix import BM25Matrix
                from rankstack.retrieval.bm25 import BM25MatrixRetriever

                if self.lucene.docstore is None:
                    raise BadInput(f"{self.lucene.path} stores no documents to build the BM25 matrix from; "
                                   f"rebuild it with `rankstack index --kind bm25`")
                with self._lock:
                    if getattr(self, "_matrix", None) is None:
                        self._matrix = BM25Matrix.build(iter(self.lucene.docstore))
                        self._matrix.check_against(self.lucene)
                return BM25MatrixRetriever(self._matrix, k1=item.get("k1", 0.9), b=item.get("b", 0.4),
                                           threads=item.get("threads"), documents=self.documents)
            return BM25Retriever(self.lucene, k1=item.get("k1", 0.9), b=item.get("b", 0.4), threads=item.get("threads"))
        if item.kind == "dense":
            from rankstack.retrieval.dense import DenseRetriever

            if not self.vectors:
                raise BadInput(f"the pipeline uses dense but none of {self.paths} is a vector index")
            want = IndexSpec.parse(item.get("index")).build_key() if item.get("index") is not None else None
            found = [v for v in self.vectors if want is None or v.spec.build_key() == want]
            if len(found) != 1:
                have = [v.spec.build_key() for v in self.vectors]
                raise BadInput(f"the pipeline's {item} matches {len(found)} of the vector indexes {have}; name one "
                               f"with index=(...)")
            index = found[0]
            model = item.get("model") or index.meta.get("model")
            if not model:
                raise BadInput("the vector index records no model; give dense:model=...")
            settings = DenseSettings.of(item.updated(model=model))
            return DenseRetriever(settings.encoder(self.models), index, search_params=settings.search_params,
                                  device=settings.device)
        if item.kind == "splade":
            if len(self.sparse) != 1:
                raise BadInput(f"the pipeline uses splade but {len(self.sparse)} of {self.paths} are sparse indexes; "
                               f"give exactly one (rankstack index --kind splade)")
            path, index = self.sparse[0]
            settings = SparseSettings.of(item, index.meta.get("model"))
            return settings.retriever(self.models, index, lucene_path=path / "lucene-impact",
                                      documents=self.documents)
        if item.kind in ("maxsim", "muvera", "plaid"):
            return self._multivector_retriever(item)
        raise BadInput(f"no retriever {item.kind!r} over index folders")

    def _token_settings(self, item: Item, index):
        from rankstack.retrieval.multivector import MultiVectorSettings

        model = item.get("model") or index.meta.get("model")
        dl = index.meta.get("document_length")
        item = item.updated(model=model) if model else item
        if dl and item.get("document_length") is None:
            item = item.updated(document_length=str(dl))
        return MultiVectorSettings.of(item)

    def _multivector_retriever(self, item: Item) -> Retriever:
        if item.kind == "plaid" and self.plaid is not None:
            s = self._token_settings(item, self.plaid)
            return s.retriever(s.encoder(self.models), None, self.plaid, documents=self.documents)
        if self.multivector is None:
            raise BadInput(f"the pipeline uses {item.kind} but none of {self.paths} is a multi-vector index; build one "
                           f"with `rankstack index --kind maxsim`" + (" (or --kind plaid)" if item.kind == "plaid"
                                                                       else ""))
        s = self._token_settings(item, self.multivector)
        derived = None
        if s.derived_key:  # MUVERA's FDEs (seconds) or PLAID's codes (k-means), built on first use, kept in memory
            with self._lock:
                if s.derived_key not in self._derived:
                    self._derived[s.derived_key] = s.derive(self.multivector)
                derived = self._derived[s.derived_key]
        return s.retriever(s.encoder(self.models), self.multivector, derived, documents=self.documents)

    def token_index_for(self, encoder):
        index = self.multivector
        if index is None or index.meta.get("model") not in (None, encoder.model_name):
            return None
        return index
