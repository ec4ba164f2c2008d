"""Rerankers by name: ``RerankerSpec.parse("icr:model=smollm2,depth=20")`` or a config table, then ``build_reranker``.

One spec format (the project's ``kind:key=value`` grammar, :mod:`rankstack.spec`) for the CLI, the service config,
pipeline specs and Python. ``model`` names the model and ``depth`` how many top candidates the rerank stage hands
the reranker (the rest keep their order below, :class:`rankstack.pipeline.Rerank`); every other option is a keyword
argument of the reranker's class, checked against its signature so the two cannot drift, and converted to the type
of the argument's default. Models are shared through a :class:`ModelCache`, so an ICR and a FIRST reranker on the
same LLM hold one copy of its weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Mapping

from rankstack.errors import BadInput
from rankstack.pipeline.core import DEFAULT_RERANK_DEPTH
from rankstack.models import ModelCache
from rankstack.rerank.base import Reranker
from rankstack.rerank.cross_encoder import DEFAULT_CROSS_ENCODER
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL
from rankstack.retrieval.token_encoders import DEFAULT_TOKEN_MODEL
from rankstack.spec import Item, coerce, parse_item, unknown_option

__all__ = ["RerankerSpec", "reranker_class", "RERANKER_KINDS", "build_reranker", "DEFAULT_RERANK_DEPTH"]


# kind -> (module, class, what "model" names, default model)
_KINDS: dict[str, tuple[str, str, str, str]] = {
    "embedding": ("rankstack.rerank.embedding", "EmbeddingReranker", "encoder", DEFAULT_DENSE_MODEL),
    "cross-encoder": ("rankstack.rerank.cross_encoder", "CrossEncoderReranker", "cross-encoder",
                      DEFAULT_CROSS_ENCODER),
    "icr": ("rankstack.rerank.llm.icr", "ICRReranker", "llm", "smollm2"),
    "first": ("rankstack.rerank.llm.listwise", "FirstReranker", "llm", "smollm2"),
    "listwise": ("rankstack.rerank.llm.listwise", "ListwiseReranker", "llm", "smollm2"),
    "setwise": ("rankstack.rerank.llm.setwise", "SetwiseReranker", "llm", "smollm2"),
    "maxsim": ("rankstack.rerank.maxsim", "MaxSimReranker", "token-encoder", DEFAULT_TOKEN_MODEL),
    "colbert-prf": ("rankstack.rerank.maxsim", "ColbertPRFReranker", "token-encoder", DEFAULT_TOKEN_MODEL),
}
RERANKER_KINDS = tuple(_KINDS)
_INTERNAL = {"self", "llm", "model", "encoder", "keep_signals"}
# options of the LLM runtime under an LLM reranker (they select the model's compressed form, shared by rerankers
# that ask for the same): weight compression, KV-cache compression and the compute dtype
LLM_RUNTIME_OPTIONS = {"weights": "fp32", "kv": "fp32", "compute": "auto"}


def reranker_class(kind: str):
    """The class a reranker kind names (its attributes say what it needs, e.g. ``wants_token_index``)."""
    return _class(kind)


def _class(kind: str):
    module, name, _, _ = _KINDS[kind]
    return getattr(importlib.import_module(module), name)


def _options(kind: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(_class(kind).__init__).parameters
    out = {n: p for n, p in params.items() if n not in _INTERNAL and p.kind is inspect.Parameter.KEYWORD_ONLY}
    if _KINDS[kind][2] == "llm":
        out.update({n: inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                    for n, d in LLM_RUNTIME_OPTIONS.items()})
    return out


def _heads(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    if isinstance(value, str):
        try:
            pairs = tuple(tuple(int(x) for x in item.split(".")) for item in value.split(";") if item.strip())
        except ValueError:
            pairs = ()
    else:
        try:
            pairs = tuple(tuple(int(x) for x in p) for p in value)
        except (TypeError, ValueError):
            pairs = ()
    if not pairs or any(len(p) != 2 for p in pairs):
        raise BadInput(f"{where}: heads are layer.head pairs separated by ';', e.g. heads=18.7;18.8")
    return pairs


def _fmt_value(key: str, value: Any) -> str:
    if key in ("heads", "full_heads"):
        return ";".join(f"{a}.{b}" for a, b in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclasses.dataclass(frozen=True)
class RerankerSpec:
    """A reranker kind, its model (name, local folder or offline key), the rerank depth and its class options."""

    kind: str
    model: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    depth: int | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise BadInput(f"unknown reranker kind {self.kind!r}; choose one of {', '.join(RERANKER_KINDS)}")
        where = f"reranker {self.kind!r}"
        if self.depth is not None:
            object.__setattr__(self, "depth", coerce(self.depth, int, key="depth", where=where))
            if self.depth <= 0:
                raise BadInput(f"{where}: depth must be a positive integer, got {self.depth}")
        if self.model is not None and not isinstance(self.model, str):
            raise BadInput(f"{where}: model must be a name or a path, got {self.model!r}")
        allowed = _options(self.kind)
        checked = []
        for key, value in self.options:
            if key not in allowed:
                raise unknown_option(where, key, ["model", "depth", *allowed])
            if key in ("heads", "full_heads"):
                value = _heads(value, where) if value is not None else None
            elif key in LLM_RUNTIME_OPTIONS:
                from rankstack.rerank.llm.kvquant import KVScheme
                from rankstack.rerank.llm.quant import WeightScheme
                from rankstack.rerank.llm.runtime import parse_compute

                value = str(value)
                parse = {"weights": WeightScheme.parse, "kv": KVScheme.parse, "compute": parse_compute}[key]
                parse(value)  # unknown names fail here
            else:
                default = allowed[key].default
                like = default if default is not None and default is not inspect.Parameter.empty else None
                value = coerce(value, like, key=key, where=where)
            checked.append((key, value))
        object.__setattr__(self, "options", tuple(checked))

    @classmethod
    def parse(cls, text: str) -> RerankerSpec:
        """``"kind"`` or ``"kind:key=value,..."``, e.g. ``"setwise:model=smollm2,depth=20,reasoning=true"``."""
        return cls.from_item(parse_item(text, "reranker spec"))

    @classmethod
    def from_item(cls, item: Item, names: Mapping[str, RerankerSpec] | None = None) -> RerankerSpec:
        """A parsed item; with ``names`` (e.g. the service's named rerankers) an item may name one of them, its
        options then overriding the named spec's."""
        base = (names or {}).get(item.kind)
        if base is None and item.kind not in _KINDS:
            if names:
                raise BadInput(f"unknown reranker {item.kind!r}; use a configured reranker {sorted(names)} or a "
                               f"reranker kind: {', '.join(RERANKER_KINDS)}")
            raise BadInput(f"unknown reranker {item.kind!r}; choose one of {', '.join(RERANKER_KINDS)}")
        opts = dict(base.options) if base else {}
        model, depth = (base.model, base.depth) if base else (None, None)
        for key, value in item.options:
            if isinstance(value, Item):
                raise BadInput(f"reranker {item.kind!r}: option {key} takes a value, not a nested spec")
            if key == "model":
                model = value
            elif key == "depth":
                depth = value
            else:
                opts[key] = value
        return cls(kind=base.kind if base else item.kind, model=model, options=tuple(opts.items()), depth=depth)

    @classmethod
    def from_config(cls, value: str | Mapping[str, Any] | RerankerSpec) -> RerankerSpec:
        """A spec string, or a table such as ``{"kind": "icr", "model": "smollm2", "depth": 20}``."""
        if isinstance(value, RerankerSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if not isinstance(value, Mapping) or "kind" not in value:
            raise BadInput(f"a reranker is a spec string or a table with a 'kind'; got {value!r}")
        rest = {k: v for k, v in value.items() if k not in ("kind", "model", "depth")}
        return cls(kind=value["kind"], model=value.get("model"), options=tuple(rest.items()),
                   depth=value.get("depth"))

    @property
    def model_name(self) -> str:
        return self.model or _KINDS[self.kind][3]

    @property
    def stage_depth(self) -> int:
        return self.depth or DEFAULT_RERANK_DEPTH

    def to_item(self) -> Item:
        opts = ([("model", self.model)] if self.model else []) + ([("depth", str(self.depth))] if self.depth else [])
        return Item(self.kind, tuple(opts + [(k, _fmt_value(k, v)) for k, v in self.options]))

    def __str__(self) -> str:
        return str(self.to_item())

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={_fmt_value(k, v)}" for k, v in self.options)
        return f"{self.kind}({self.model_name}{',' + opts if opts else ''})"


def _load(role: str, name: str) -> Any:
    """What ``model`` names for a reranker role, loaded (the model cache keeps it): the LLM runtime (with its
    compression options after NULs), a token encoder's or a sentence-transformer's weights; a cross-encoder loads in
    its reranker's constructor, so its name is kept as is."""
    if role == "llm":
        from rankstack.rerank.llm.runtime import CausalLM

        model, *opts = name.split("\0")
        return CausalLM(model, **dict(o.split("=", 1) for o in opts))
    if role == "token-encoder":
        from rankstack.retrieval.token_encoders import load_token_model

        return load_token_model(name)
    return name


def build_reranker(spec: RerankerSpec | str | Mapping[str, Any], cache: ModelCache | None = None) -> Reranker:
    """The reranker a spec describes (without its depth, which belongs to the rerank stage), loading (or reusing
    from ``cache``) its model."""
    spec = RerankerSpec.from_config(spec)
    cache = cache or ModelCache()
    role = _KINDS[spec.kind][2]
    opts = dict(spec.options)
    if role == "llm":  # compute=auto as this machine resolves it: rerankers that end up alike share one model
        from rankstack.rerank.llm.runtime import resolve_compute

        opts["compute"] = resolve_compute(str(opts.get("compute", "auto")))
    # the model's key names the runtime options that differ from plain float32
    runtime = {k: opts.pop(k) for k in LLM_RUNTIME_OPTIONS if k in opts and opts[k] != "fp32"}
    opts = {k: v for k, v in opts.items() if k not in LLM_RUNTIME_OPTIONS}
    key = "\0".join([spec.model_name, *(f"{k}={v}" for k, v in sorted(runtime.items()))])
    if role == "encoder":  # encoders share their loaded weights with every other user (dense retrievers)
        from rankstack.retrieval.encoders import cached_encoder

        model = cached_encoder(cache, key)
    else:
        model = cache.get(role, key, lambda name: _load(role, name))
    reranker = _class(spec.kind)(model, **opts)  # heads arrive as (layer, head) tuples already
    reranker.name = spec.label
    return reranker
