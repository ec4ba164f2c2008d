"""``dense``: a text encoder over any vector index, exact (``flat``) or compressed (``index=(binary:bits=2)``...)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rankstack.index.base import IndexSpec
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL, DOCUMENT_OPTIONS, ENCODER_OPTIONS, cached_encoder
from rankstack.retrieval.onnx_encoder import BACKEND_CHOICES
from rankstack.retrieval.kinds.base import RetrievalKind, Settings, slug
from rankstack.spec import Item, Option, check_options, parse_item

logger = logging.getLogger(__name__)

__all__ = ["DenseKind", "DenseSettings", "DENSE"]


def _index_spec(value) -> Item:
    from rankstack.spec import parse_item

    return parse_item(str(IndexSpec.parse(value)), "index spec")  # checked, kept in canonical form


# options of an index spec, which a user may give a dense item by mistake
_INDEX_ONLY = {"nlist", "nprobe", "m", "nbits", "hnsw_m", "ef_construction", "ef_search", "bits", "binary_search",
               "mode", "train_size", "rescore", "rescore_multiplier", "multiplier", "seed", "ef"}


@dataclass(frozen=True)
class DenseSettings(Settings):
    """A ``dense:...`` item resolved: the encoder, the index to build or find, and how to search it.

    ``vectors_key`` identifies the document vectors (model and the options that change them); ``index_key``
    adds the index's build-time spec. Two items with equal keys can share one index.
    """

    kind: str = "dense"
    model: str = DEFAULT_DENSE_MODEL
    encoder_options: dict = field(default_factory=dict, compare=False)
    index: IndexSpec = field(default_factory=lambda: IndexSpec("flat"))
    device: str | None = None
    vectors_key: str = field(init=False, default="")

    def __post_init__(self):
        doc = {k: self.encoder_options[k] for k in DOCUMENT_OPTIONS if k in self.encoder_options}
        doc = {k: v for k, v in doc.items() if v != ENCODER_OPTIONS.get(k)}
        vk = str(Item(self.model, tuple((k, str(v)) for k, v in sorted(doc.items()))))
        object.__setattr__(self, "vectors_key", vk)
        object.__setattr__(self, "index_key", f"{vk}|{self.index.build_key()}")
        object.__setattr__(self, "key", f"dense:{self.index_key}:{self.search_params}:"
                                        f"{sorted(self.encoder_options.items())}:{self.device}")

    @classmethod
    def of(cls, item: Item | str, default_model: str = DEFAULT_DENSE_MODEL) -> DenseSettings:
        return DENSE.settings(DENSE.check(parse_item(item, "retriever spec") if isinstance(item, str) else item),
                              {"model": default_model})

    @property
    def search_params(self) -> dict[str, Any]:
        return self.index.search_params()

    def encoder(self, models):
        return cached_encoder(models, self.model, **self.encoder_options)


def _encoder_option(name: str, **kw) -> Option:
    """An encoder option with the default (or the type) the encoder declares in ENCODER_OPTIONS."""
    value = ENCODER_OPTIONS[name]
    return Option(type=value, **kw) if isinstance(value, type) else Option(value, **kw)


class DenseKind(RetrievalKind):
    name = "dense"
    summary = "a text encoder over a vector index, exact (flat) or compressed (index=(...))"
    saved_kinds = ("dense-flat-ip", "dense-compressed")
    stats_labels = ("dense",)
    options = {
        "model": Option(type=str, doc="sentence-transformers name or folder, or hash:<dim>"),
        "index": Option(type=Item, parse=_index_spec, doc="the vector index: flat, pq:m=48, binary:bits=2..."),
        **{name: _encoder_option(name, **kw) for name, kw in (
            ("batch_size", {"low": 1}), ("normalize", {}), ("max_seq_length", {"low": 1}), ("query_prefix", {}),
            ("document_prefix", {}))},
        "device": Option(type=str),  # (None: the encoder's default device)
        **{name: _encoder_option(name, **kw) for name, kw in (
            ("backend", {"choices": BACKEND_CHOICES, "doc": "auto: the fastest backend measured lossless here"}),
            ("int8_scope", {}), ("cache", {}))},
    }

    def check(self, item: Item) -> Item:
        return check_options(item, self.options, "retriever 'dense'", hint=lambda key: (
            "Nested specs with several options go in parentheses, e.g. index=(binary:rescore=int8,multiplier=10)"
            if key in _INDEX_ONLY else ""))

    def settings(self, item: Item, defaults: Mapping[str, Any]) -> DenseSettings:
        opts = {k: item.get(k) for k in ENCODER_OPTIONS if k != "device" and item.get(k) is not None}
        index = item.get("index")
        return DenseSettings(model=item.get("model") or defaults.get("model") or DEFAULT_DENSE_MODEL,
                             encoder_options=opts,
                             index=IndexSpec.parse(index) if index is not None else IndexSpec("flat"),
                             device=item.get("device"))

    def folder(self, settings: DenseSettings, defaults: Mapping[str, Any]) -> str:
        default = settings.index.kind == "flat" and settings.vectors_key == str(Item(defaults.get("model") or
                                                                                      DEFAULT_DENSE_MODEL))
        return "dense" if default else f"dense-{slug(settings.index_key)}"

    # ---- the stored index ---------------------------------------------------------------------------------------

    def encoder(self, settings: DenseSettings, models):
        return settings.encoder(models)

    def encode(self, settings, encoder, documents):
        out = [encoder.encode_documents(list(documents[i:i + 256])) for i in range(0, len(documents), 256)]
        return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)

    def empty(self, settings: DenseSettings, meta: dict, *, encoder=None, batch=None):
        from rankstack.index.registry import new_vector_index

        dim = encoder.dim if encoder is not None else int(np.asarray(batch).shape[1])
        return new_vector_index(settings.index, dim, meta={"model": settings.model, "index_key": settings.index_key,
                                                           **meta})

    def apply(self, index, removed, docids, batch, state) -> None:
        pending = state.setdefault("pending", {})  # docid -> vector, while a compressed index waits for training
        for d in removed:
            pending.pop(d, None)
        gone = [d for d in removed if d in index]
        if gone:
            index.remove(gone)
        if getattr(index, "trained", True):
            if len(docids):
                index.add(list(docids), batch, upsert=True)
            return
        pending.update(zip(docids, batch))
        if len(pending) >= index.min_training_vectors():
            ids = list(pending)
            vecs = np.stack([pending[d] for d in ids])
            index.train(vecs)
            index.add(ids, vecs)
            pending.clear()

    def holds(self, index, state: dict, docid: str) -> bool:
        return docid in index or docid in state.get("pending", {})

    def held(self, index, state: dict) -> list[str]:
        return [*index.docids, *state.get("pending", {})]

    def ready(self, index) -> str | None:
        if getattr(index, "trained", True):
            return None
        return f"the {index.spec} index is not trained yet: it needs {index.min_training_vectors()} documents"

    def write(self, settings, documents, batch, meta, path):
        from rankstack.index.registry import build_vector_index

        meta = {"model": settings.model, "index_key": settings.index_key, **meta}
        build_vector_index(settings.index, [d.docid for d in documents], batch, meta=meta).save(path)
        return self.load(settings, path, None)  # a compressed index serves its rescoring tier from the file

    def build(self, settings, models, documents, meta, path):
        import time

        encoder = self.encoder(settings, models)
        t0 = time.perf_counter()
        vectors = self.encode(settings, encoder, documents)
        secs = time.perf_counter() - t0
        logger.info("encoded %d documents in %.1f s", len(documents), secs)
        return self.write(settings, documents, vectors, {"normalized": getattr(encoder, "normalize", True),
                                                         "encode_seconds": round(secs, 3), **meta}, path)

    def source(self, settings: DenseSettings) -> DenseSettings | None:
        if settings.index.kind == "flat":
            return None
        return DenseSettings(model=settings.model, encoder_options=settings.encoder_options, device=settings.device)

    def build_from(self, settings, source, meta, path):
        from rankstack.index.registry import build_vector_index

        index = build_vector_index(settings.index, source.docids, source.vectors(),
                                   meta={**source.meta, **meta, "index_key": settings.index_key})
        index.save(path)
        return self.load(settings, path, None)

    def load(self, settings, path: Path, models):
        from rankstack.index.registry import load_vector_index

        return load_vector_index(path)

    def spec_of(self, index) -> str:
        spec = getattr(index, "spec", None)  # a compressed index names its own spec; a flat one is plain dense
        return f"dense:index=({spec.build_key()})" if spec is not None else "dense"

    def matches(self, settings: DenseSettings, index) -> str | None:
        meta = index.meta
        key = meta.get("index_key")
        if key is None and meta.get("vectors") is not None:  # written before index keys were recorded
            key = f"{meta['vectors']}|{index.spec.build_key()}"
        if (key is not None and key != settings.index_key) or meta.get("model") != settings.model:
            return f"built as {key or meta.get('model')!r}, configured as {settings.index_key!r}"
        return None

    def split(self, batch) -> list:
        return list(batch)

    def pack(self, payloads: list) -> dict[str, np.ndarray]:
        return {"vectors": np.stack(payloads).astype(np.float32, copy=False)}

    def unpack(self, arrays):
        return np.asarray(arrays["vectors"], np.float32)

    # ---- retrieval ----------------------------------------------------------------------------------------------

    def retriever(self, settings: DenseSettings, index, *, models, documents=None, derived=None, path=None):
        from rankstack.retrieval.dense import DenseRetriever

        return DenseRetriever(settings.encoder(models), index, search_params=settings.search_params,
                              device=settings.device, documents=documents)

    def defaults_of(self, index) -> dict[str, Any]:
        return {"model": index.meta["model"]} if index.meta.get("model") else {}

    def select(self, item: Item, candidates: Sequence[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
        """The index folders an item may mean: those whose build spec is the item's ``index=`` (all, without it)."""
        want = IndexSpec.parse(item.get("index")).build_key() if item.get("index") is not None else None
        return [(p, ix) for p, ix in candidates if want is None or ix.spec.build_key() == want]


DENSE = DenseKind()
