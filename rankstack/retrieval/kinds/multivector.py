"""Late interaction: ``maxsim`` (exact MaxSim), ``muvera`` (fixed-dimensional encodings searched as single vectors,
then exact rescoring) and ``plaid`` (compressed tokens, centroid interaction). The three share one stored index, the
token vectors of one encoder (:class:`~rankstack.index.multivector.MultiVectorIndex`); MUVERA's encodings and PLAID's
codes are derived from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rankstack.errors import BadInput
from rankstack.index.base import IndexSpec
from rankstack.retrieval.kinds.base import RetrievalKind, Settings, slug
from rankstack.retrieval.token_encoders import DEFAULT_TOKEN_MODEL, TOKEN_ENCODER_OPTIONS, cached_token_encoder
from rankstack.spec import Item, Option, parse_item

__all__ = ["MultiVectorKind", "MultiVectorSettings", "MAXSIM", "MUVERA", "PLAID"]


def _index_spec(value) -> Item:
    from rankstack.spec import parse_item

    return parse_item(str(IndexSpec.parse(value)), "index spec")


_COMMON = {
    "model": Option(type=str, doc="a ColBERT-style (PyLate) checkpoint, or a sentence-transformers model"),
    "batch_size": Option(32, low=1),
    "query_length": Option(type=int, low=1),
    "document_length": Option(type=int, low=1),
    "device": Option(type=str),
}
_PARAMS = {
    "maxsim": {},
    "muvera": {"k_sim": Option(5, low=0), "d_proj": Option(16, low=1), "reps": Option(20, low=1),
               "fill_empty": Option(True), "seed": Option(0), "candidates": Option(1000, low=0),
               "index": Option(type=Item, parse=_index_spec, doc="the single-vector index of the encodings")},
    "plaid": {"nbits": Option(2, choices=(1, 2, 4)), "ncentroids": Option(type=int, low=1), "nprobe": Option(4, low=1),
              "candidates": Option(1000, low=0), "seed": Option(0)},
}


@dataclass(frozen=True)
class MultiVectorSettings(Settings):
    """A ``maxsim``/``muvera``/``plaid`` item resolved: the token encoder, the token vectors it makes
    (``tokens_key``) and the kind's own parameters."""

    kind: str = "maxsim"
    model: str = DEFAULT_TOKEN_MODEL
    encoder_options: dict = field(default_factory=dict, compare=False)
    params: dict = field(default_factory=dict, compare=False)
    tokens_key: str = field(init=False, default="")

    def __post_init__(self):
        dl = self.encoder_options.get("document_length")
        tk = f"{self.model}|document_length={dl or 'model'}"
        object.__setattr__(self, "tokens_key", tk)
        object.__setattr__(self, "index_key", f"multivector|{tk}")
        object.__setattr__(self, "key", f"{self.kind}:{tk}:{sorted(self.encoder_options.items())}:"
                                        f"{sorted((k, str(v)) for k, v in self.params.items())}")

    @classmethod
    def of(cls, item: Item | str, default_model: str = DEFAULT_TOKEN_MODEL) -> MultiVectorSettings:
        item = parse_item(item, "retriever spec") if isinstance(item, str) else item
        kind = {"maxsim": MAXSIM, "muvera": MUVERA, "plaid": PLAID}.get(item.kind)
        if kind is None:
            raise BadInput(f"{item.kind!r} is not a multi-vector kind; they are maxsim, muvera and plaid")
        return kind.settings(kind.check(item), {"token_model": default_model})

    def encoder(self, models):
        return cached_token_encoder(models, self.model, **self.encoder_options)

    @property
    def fde(self):
        from rankstack.index.muvera import FDEConfig

        p = self.params
        return FDEConfig(k_sim=p["k_sim"], d_proj=p["d_proj"], reps=p["reps"], fill_empty=p["fill_empty"],
                         seed=p["seed"])

    @property
    def fde_index_spec(self) -> IndexSpec:
        return IndexSpec.parse(self.params["index"]) if self.params.get("index") is not None else IndexSpec("flat")

    @property
    def derived_key(self) -> str | None:
        """What this kind's second index (built from the token vectors) depends on; None for ``maxsim``."""
        if self.kind == "muvera":
            return f"{self.fde.label()}|seed={self.fde.seed}|{self.fde_index_spec.build_key()}"
        if self.kind == "plaid":
            p = self.params
            return f"nbits={p['nbits']}|ncentroids={p['ncentroids'] or 'auto'}|seed={p['seed']}"
        return None

    def derive(self, tokens, *, meta: dict | None = None):
        """This kind's second index, built from ``tokens``: MUVERA's FDE index or PLAID's codes."""
        from rankstack.index.multivector import PlaidIndex
        from rankstack.retrieval.multivector import build_fde_index

        if self.kind == "muvera":
            return build_fde_index(tokens, self.fde, self.fde_index_spec, meta=meta)
        if self.kind == "plaid":
            p = self.params
            return PlaidIndex.build(tokens, nbits=p["nbits"], ncentroids=p["ncentroids"], seed=p["seed"], meta=meta)
        raise BadInput("maxsim searches the token vectors themselves; it derives no index")

    def document_fdes(self, encoded) -> np.ndarray:
        """MUVERA FDEs of newly encoded documents, from their tokens rounded to the token index's float16 (what
        :meth:`derive` reads), so an FDE index updated with them equals one derived afresh."""
        from rankstack.index.muvera import document_fdes

        return document_fdes(np.asarray(encoded.vectors, np.float16), encoded.offsets, self.fde)

    def retriever(self, encoder, tokens, derived=None, *, documents=None):
        """The retriever of this kind over ``tokens`` and, for muvera/plaid, the ``derived`` index
        (:meth:`derive`; PLAID searches its codes alone, so ``tokens`` may be None there)."""
        from rankstack.retrieval.multivector import MaxSimRetriever, MuveraRetriever, PlaidRetriever

        p = self.params
        if self.kind == "maxsim":
            return MaxSimRetriever(encoder, tokens, documents=documents)
        if self.kind == "muvera":
            return MuveraRetriever(encoder, tokens, derived, self.fde, candidates=p["candidates"],
                                   search_params=self.fde_index_spec.search_params(), documents=documents)
        return PlaidRetriever(encoder, derived, nprobe=p["nprobe"], candidates=p["candidates"], documents=documents)


class MultiVectorKind(RetrievalKind):
    """One of the three late-interaction kinds (they differ in what they derive from the shared token index)."""

    saved_kinds = ("multi-vector",)

    def __init__(self, name: str, summary: str):
        self.name = name
        self.summary = summary
        self.options = {**_COMMON, **_PARAMS[name]}
        self.stats_labels = ("multivector",) + ((name,) if name != "maxsim" else ())
        if name == "plaid":
            self.saved_kinds = ("multi-vector-plaid", "multi-vector")

    def settings(self, item: Item, defaults: Mapping[str, Any]) -> MultiVectorSettings:
        enc = {k: item.get(k) for k in TOKEN_ENCODER_OPTIONS if item.get(k) is not None}
        if "document_length" not in enc and defaults.get("document_length"):
            enc["document_length"] = int(defaults["document_length"])
        params = {k: item.get(k, o.default) for k, o in _PARAMS[self.name].items()}
        return MultiVectorSettings(kind=self.name, model=item.get("model") or defaults.get("token_model") or
                                   DEFAULT_TOKEN_MODEL, encoder_options=enc, params=params)

    def defaults_of(self, index) -> dict[str, Any]:
        meta = getattr(index, "meta", None) or {}
        out = {"token_model": meta["model"]} if meta.get("model") else {}
        if meta.get("document_length"):
            out["document_length"] = meta["document_length"]
        return out

    def folder(self, settings: MultiVectorSettings, defaults) -> str:
        return f"multivector-{slug(settings.tokens_key)}"

    def select(self, item: Item, candidates):
        from rankstack.index.multivector import PlaidIndex

        plaid = [c for c in candidates if isinstance(c[1], PlaidIndex)]
        tokens = [c for c in candidates if not isinstance(c[1], PlaidIndex)]
        if self.name == "plaid" and plaid:
            return plaid
        if not tokens and plaid:
            raise BadInput(f"{self.name} searches the token vectors, but the index given is PLAID's compressed form; "
                           f"build one with `rankstack index --kind maxsim`")
        return tokens

    # ---- the stored index: token vectors ---------------------------------------------------------------------

    def encoder(self, settings: MultiVectorSettings, models):
        return settings.encoder(models)

    def encode(self, settings, encoder, documents):
        return encoder.encode_documents(list(documents)) if len(documents) else None

    def empty(self, settings: MultiVectorSettings, meta: dict, *, encoder=None, batch=None):
        from rankstack.index.multivector import MultiVectorIndex

        dim = encoder.dim if encoder is not None else int(batch.vectors.shape[1])
        dl = encoder.document_length if encoder is not None else settings.encoder_options.get("document_length")
        return MultiVectorIndex.empty(dim, meta={"model": settings.model, "vectors": settings.tokens_key,
                                                 "document_length": dl, **meta})

    def apply(self, index, removed, docids, batch, state) -> None:
        index.update(list(removed), list(docids), batch if len(docids) else None)

    def write(self, settings, documents, batch, meta, path):
        from rankstack.index.multivector import MultiVectorIndex

        if not len(documents):
            raise BadInput("cannot build a multi-vector index of an empty corpus; give it some documents")
        index = MultiVectorIndex.build([d.docid for d in documents], batch,
                                       meta={"model": settings.model, "vectors": settings.tokens_key, **meta})
        index.save(path)
        return index

    def build(self, settings, models, documents, meta, path):
        from rankstack.retrieval.multivector import build_token_index

        index = build_token_index(self.encoder(settings, models), list(documents),
                                  meta={"vectors": settings.tokens_key, **meta})
        index.save(path)
        return index

    def write_folder(self, settings, models, documents, path):
        """The token vectors (``maxsim``, ``muvera``: MUVERA's encodings are derived at search), or for ``plaid`` the
        compressed form alone."""
        from rankstack.index.multivector import PlaidIndex
        from rankstack.retrieval.multivector import build_token_index

        index = build_token_index(self.encoder(settings, models), list(documents),
                                  meta={"vectors": settings.tokens_key})
        if self.name == "plaid":
            p = settings.params
            index = PlaidIndex.build(index, nbits=p["nbits"], ncentroids=p["ncentroids"], seed=p["seed"])
        index.save(path)
        return index

    def load(self, settings, path: Path, models):
        from rankstack.index.registry import open_index

        return open_index(path)

    def matches(self, settings: MultiVectorSettings, index) -> str | None:
        from rankstack.index.multivector import PlaidIndex

        meta = index.meta
        if meta.get("model") not in (None, settings.model):
            return f"built with {meta.get('model')!r}, configured with {settings.model!r}"
        want, built = settings.encoder_options.get("document_length"), meta.get("document_length")
        if want and built and int(want) != int(built):
            return f"built with document_length={built}, configured with {want}"
        if isinstance(index, PlaidIndex):
            return None
        vectors = meta.get("vectors", "")
        if not want and "document_length=model" not in vectors and built is None:
            return f"built as {vectors!r}, configured as {settings.tokens_key!r}"
        return None

    def split(self, batch) -> list:
        if batch is None:
            return []
        off = batch.offsets
        return [(batch.vectors[off[i]:off[i + 1]].astype(np.float16), batch.token_ids[off[i]:off[i + 1]])
                for i in range(len(off) - 1)]

    def pack(self, payloads: list) -> dict[str, np.ndarray]:  # float16, as the token index stores them
        return {"vectors": np.concatenate([v for v, _ in payloads]).astype(np.float16, copy=False),
                "lengths": np.array([len(v) for v, _ in payloads], np.int64),
                "token_ids": np.concatenate([t for _, t in payloads]).astype(np.int32, copy=False)}

    def unpack(self, arrays):
        from rankstack.retrieval.token_encoders import EncodedDocuments

        return EncodedDocuments(vectors=np.asarray(arrays["vectors"]).astype(np.float32), lengths=arrays["lengths"],
                                token_ids=arrays["token_ids"])

    # ---- derived: MUVERA's encodings, PLAID's codes --------------------------------------------------------------

    def derived_key(self, settings: MultiVectorSettings, index, *, changing: bool = False) -> str | None:
        from rankstack.index.multivector import PlaidIndex

        if isinstance(index, PlaidIndex):
            return None
        key = settings.derived_key
        return None if key is None else f"{settings.tokens_key}|{key}"

    def derive(self, settings: MultiVectorSettings, index, meta: dict | None = None):
        return settings.derive(index, meta=meta)

    def load_derived(self, settings: MultiVectorSettings, path: Path):
        from rankstack.index.multivector import PlaidIndex
        from rankstack.index.registry import load_vector_index

        return load_vector_index(path) if self.name == "muvera" else PlaidIndex.load(path)

    def prepare(self, settings: MultiVectorSettings, batch) -> Any:
        """MUVERA's encodings of newly written documents, made before the write lock is taken."""
        return settings.document_fdes(batch) if self.name == "muvera" and batch is not None else None

    def follow(self, settings: MultiVectorSettings, derived, removed, docids, batch, prepared=None) -> bool:
        """PLAID's codes take writes in place (compressed with the centroids of their last derivation) until the
        live tokens have doubled since (:meth:`~rankstack.index.multivector.PlaidIndex.outgrown`); MUVERA's
        encodings drop and add the same documents (an encoding depends on its document alone)."""
        if self.name == "plaid":
            derived.update(list(removed), list(docids), batch if len(docids) else None)
            return not derived.outgrown()
        if self.name != "muvera":
            return False
        gone = [d for d in dict.fromkeys([*removed, *docids]) if d in derived]
        if gone:
            derived.remove(gone)
        if len(docids):
            derived.add(list(docids), prepared if prepared is not None else settings.document_fdes(batch))
        return True

    # ---- retrieval ----------------------------------------------------------------------------------------------

    def retriever(self, settings: MultiVectorSettings, index, *, models, documents=None, derived=None, path=None):
        from rankstack.index.multivector import PlaidIndex

        encoder = settings.encoder(models)
        if isinstance(index, PlaidIndex):
            return settings.retriever(encoder, None, index, documents=documents)
        return settings.retriever(encoder, index, derived, documents=documents)


MAXSIM = MultiVectorKind("maxsim", "exact late interaction (MaxSim) over every document's token vectors")
MUVERA = MultiVectorKind("muvera", "MUVERA: fixed-dimensional encodings searched as single vectors, then exact MaxSim")
PLAID = MultiVectorKind("plaid", "PLAID-style search over compressed token vectors (centroids and residual codes)")
