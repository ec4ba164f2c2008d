"""What a compiled pipeline draws on: indexes, encoders, rerankers and documents.

A :class:`Resources` turns spec items into objects: ``retriever(item)`` and ``reranker(item)``. ``retriever`` is
written once, here: the item's kind (:mod:`rankstack.retrieval.kinds`) resolves it into settings and builds the
retriever; a place where indexes live only supplies the index for a kind and settings (:meth:`Resources.index`).
The places: :class:`~rankstack.pipeline.workspace.DatasetWorkspace` (a BEIR dataset, indexes built once and cached
on disk: what ``rankstack eval`` and ``rankstack search --dataset`` use), :class:`IndexDirs` (index folders built by
``rankstack index``), :class:`~rankstack.distributed.sharded.ShardedResources` (a sharded collection) and the service's
:class:`~rankstack.service.collection.Collection` (indexes kept in step with its log).
"""

from __future__ import annotations

import threading
from abc import ABC
from pathlib import Path
from typing import Any, Mapping, Sequence

from rankstack.errors import BadInput
from rankstack.models import ModelCache
from rankstack.records import Document
from rankstack.rerank.factory import RerankerSpec, build_reranker
from rankstack.retrieval import kinds
from rankstack.retrieval.base import Retriever
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL
from rankstack.retrieval.kinds import RetrievalKind, Settings, slug
from rankstack.retrieval.kinds.dense import DenseSettings
from rankstack.retrieval.kinds.multivector import MultiVectorSettings
from rankstack.retrieval.kinds.splade import SparseSettings
from rankstack.spec import Item

__all__ = ["Resources", "DenseSettings", "SparseSettings", "MultiVectorSettings", "IndexDirs", "slug", "rrf_of"]



def rrf_of(specs: list[str]) -> str:
    """The natural pipeline over several retrievers' specs: the one, or RRF of all of them."""
    return specs[0] if len(specs) == 1 else "rrf(" + ", ".join(specs) + ")"

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
        self._retrievers: dict[str, Retriever] = {}
        self._derived: dict[str, Any] = {}
        self._lock = threading.RLock()

    # ---- retrievers: written once for every kind and every place ----------------------------------------------

    def retriever(self, item: Item | str) -> Retriever:
        """The retriever an item (``bm25:k1=1.2``, ``dense:index=(binary)``...) names, over this place's index of
        its kind; built once per settings and shared."""
        kind, settings = self.resolve(item)
        with self._lock:
            found = self._retrievers.get(settings.key)
        if found is not None:
            return found
        made = self.serve(kind, settings)
        with self._lock:
            return self._retrievers.setdefault(settings.key, made)

    def defaults(self, kind: RetrievalKind) -> dict[str, Any]:
        """What this place supplies for options an item leaves out (the encoder of ``dense`` items naming none)."""
        return {"model": self.default_model}

    def resolve(self, item: Item | str) -> tuple[RetrievalKind, Settings]:
        return kinds.resolve(item, self.defaults(kinds.get(kinds.canonical(item).kind)))

    def serve(self, kind: RetrievalKind, settings: Settings) -> Retriever:
        """A retriever of ``settings`` over this place's index (places whose indexes change wrap it)."""
        index, path = self.index(kind, settings)
        key = kind.derived_key(settings, index)
        derived = self.derived(kind, settings, index, key, path) if key is not None else None
        return kind.retriever(settings, index, models=self.models, documents=self.documents, derived=derived,
                              path=path)

    def index(self, kind: RetrievalKind, settings: Settings) -> tuple[Any, Path | None]:
        """This place's stored index for ``settings`` (built or opened as the place does), and its folder."""
        raise BadInput(f"{type(self).__name__} keeps no indexes: it cannot serve a {kind.name} retriever")

    def derived(self, kind: RetrievalKind, settings: Settings, index, key: str, path: Path | None) -> Any:
        """The index ``settings`` derives from ``index`` (PLAID's codes, MUVERA's encodings, BM25's matrix): the one
        ``rankstack index`` saved beside it (``<folder>/derived``), else built on first use; kept in memory."""
        with self._lock:
            if key not in self._derived:
                saved = Path(path) / "derived" / slug(key, 32) if path is not None else None
                self._derived[key] = (kind.load_derived(settings, saved) if saved is not None and saved.is_dir()
                                      else kind.derive(settings, index))
            return self._derived[key]

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
        from rankstack.pipeline.relevance import RelevanceFilter, RelevanceModel, score_key

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
        from rankstack.retrieval.encoders import cached_encoder

        encoder = cached_encoder(self.models, model.encoder) if model.method == "adapter" else None
        return RelevanceFilter(model, min_relevance=item.get("min"), encoder=encoder)


class IndexDirs(Resources):
    """Index folders built by ``rankstack index`` (a Lucene BM25 index, vector indexes, a sparse or multi-vector
    index), for ``rankstack search --index DIR``. An item searches the folder of its kind (a ``dense`` item the vector
    index whose build spec matches its ``index=``, or the only one) and takes what it leaves out (the encoder) from
    what that folder records."""

    def __init__(self, paths: Sequence[str | Path], models: ModelCache | None = None):
        from rankstack.index.base import read_params

        super().__init__(models)
        if not paths:
            raise BadInput("give at least one index folder (--index DIR)")
        self.paths = [str(p) for p in paths]
        self.folders: list[tuple[Path, str, Any]] = []
        for p in paths:
            saved = read_params(p, None, None).get("kind")
            if saved == "sharded":
                raise BadInput(f"{p} is a sharded collection: search it on its own (--index {p}), through "
                               f"rankstack.distributed.sharded.ShardedResources")
            owner = next((k for k in map(kinds.get, kinds.names()) if saved in k.saved_kinds), None)
            if owner is None:
                raise BadInput(f"{p} holds an index of kind {saved!r}, which no retrieval kind here reads (they read "
                               f"{sorted({s for k in map(kinds.get, kinds.names()) for s in k.saved_kinds})}); "
                               f"register the kind that wrote it")
            self.folders.append((Path(p), saved, owner.open_folder(Path(p))))
        stores = [ix.docstore for _, saved, ix in self.folders if getattr(ix, "docstore", None) is not None]
        self.documents = stores[0] if stores else None
        self._chosen: dict[str, tuple[Any, Path]] = {}

    def _candidates(self, kind: RetrievalKind, item: Item) -> list[tuple[Path, Any]]:
        found = [(p, ix) for p, saved, ix in self.folders if saved in kind.saved_kinds]
        return kind.select(item, found) if found else found

    def resolve(self, item: Item | str) -> tuple[RetrievalKind, Settings]:
        item = kinds.canonical(item)
        kind = kinds.get(item.kind)
        found = self._candidates(kind, item)
        if len(found) != 1:
            have = [f"{saved} ({p})" for p, saved, _ in self.folders]
            if not found:
                raise BadInput(f"the pipeline uses {item} but none of the folders given holds a {kind.name} index "
                               f"(they hold {have}); build one with `rankstack index --kind {kind.name}`")
            raise BadInput(f"the pipeline's {item} matches {len(found)} of the index folders {have}; name one with "
                           f"index=(...)")
        path, index = found[0]
        settings = kind.settings(item, kind.defaults_of(index))
        why = kind.matches(settings, index)
        if why is not None:
            raise BadInput(f"the index at {path} does not serve {item}: {why}; drop the options that differ or "
                           f"rebuild it")
        self._chosen[settings.key] = (index, path)
        return kind, settings

    def index(self, kind: RetrievalKind, settings: Settings) -> tuple[Any, Path | None]:
        return self._chosen[settings.key]

    def default_spec(self) -> str:
        """The natural pipeline over these folders: the one index's retriever, or RRF of all of them."""
        return rrf_of([next(k for k in map(kinds.get, kinds.names()) if saved in k.saved_kinds).spec_of(ix)
                       for _, saved, ix in self.folders])

    def token_index_for(self, encoder):
        from rankstack.index.multivector import MultiVectorIndex

        for _, _, index in self.folders:
            if isinstance(index, MultiVectorIndex) and index.meta.get("model") in (None, encoder.model_name):
                return index
        return None
