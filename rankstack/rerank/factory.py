"""Rerankers by name: ``RerankerSpec.parse("icr:model=smollm2,depth=20")`` or a config table, then ``build()``.

One spec format for the CLI, the service config and Python. The options a kind accepts are its class's keyword
arguments (checked against the signature, so the two cannot drift); values given as text are converted to the
type of the argument's default. Models are shared through a :class:`ModelCache`, so an ICR and a FIRST reranker on
the same LLM hold one copy of its weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import threading
from typing import Any, Mapping

from rankstack.errors import BadInput
from rankstack.rerank.base import Reranker
from rankstack.rerank.cross_encoder import DEFAULT_CROSS_ENCODER
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

__all__ = ["RerankerSpec", "ModelCache", "RERANKER_KINDS", "build_reranker"]

# kind -> (module, class, what "model" names, default model)
_KINDS: dict[str, tuple[str, str, str, str]] = {
    "embedding": ("rankstack.rerank.embedding", "EmbeddingReranker", "encoder", DEFAULT_DENSE_MODEL),
    "cross-encoder": ("rankstack.rerank.cross_encoder", "CrossEncoderReranker", "cross-encoder",
                      DEFAULT_CROSS_ENCODER),
    "icr": ("rankstack.rerank.llm.icr", "ICRReranker", "llm", "smollm2"),
    "first": ("rankstack.rerank.llm.listwise", "FirstReranker", "llm", "smollm2"),
    "listwise": ("rankstack.rerank.llm.listwise", "ListwiseReranker", "llm", "smollm2"),
    "setwise": ("rankstack.rerank.llm.setwise", "SetwiseReranker", "llm", "smollm2"),
}
RERANKER_KINDS = tuple(_KINDS)
_INTERNAL = {"self", "llm", "model", "encoder", "keep_signals"}


def _class(kind: str):
    module, name, _, _ = _KINDS[kind]
    return getattr(importlib.import_module(module), name)


def _options(kind: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(_class(kind).__init__).parameters
    return {n: p for n, p in params.items() if n not in _INTERNAL and p.kind is inspect.Parameter.KEYWORD_ONLY}


def _convert(text: str, default: Any, key: str, spec: str) -> Any:
    text = text.strip()
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int) or default is None and text.lstrip("-").isdigit():
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise BadInput(f"reranker spec {spec!r}: {key}={text!r} is not a valid "
                       f"{type(default).__name__ if default is not None else 'value'}") from None
    return text


def _heads(text: str, spec: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(int(x) for x in item.split(".")) for item in text.split(";") if item.strip())
    except ValueError:
        pairs = ()
    if not pairs or any(len(p) != 2 for p in pairs):
        raise BadInput(f"reranker spec {spec!r}: heads are layer.head pairs separated by ';', e.g. heads=18.7;18.8")
    return pairs


@dataclasses.dataclass(frozen=True)
class RerankerSpec:
    """A reranker kind, its model (name, local folder or offline key) and its keyword options."""

    kind: str
    model: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise BadInput(f"unknown reranker kind {self.kind!r}; choose one of {', '.join(RERANKER_KINDS)}")
        allowed = _options(self.kind)
        bad = [k for k, _ in self.options if k not in allowed]
        if bad:
            raise BadInput(f"reranker {self.kind!r} has no option {bad[0]!r}; its options are model, "
                           f"{', '.join(allowed)}")
        checked = []
        for key, value in self.options:  # table values: the argument's type, or text that converts to it
            default = allowed[key].default
            if isinstance(value, str) and isinstance(default, (bool, int, float)):
                value = _convert(value, default, key, self.kind)
            elif isinstance(default, bool) != isinstance(value, bool) or (
                    isinstance(default, (int, float)) and not isinstance(value, (int, float))):
                raise BadInput(f"reranker {self.kind!r}: {key}={value!r} should be a {type(default).__name__}")
            checked.append((key, value))
        object.__setattr__(self, "options", tuple(checked))

    @classmethod
    def parse(cls, text: str) -> RerankerSpec:
        """``"kind"`` or ``"kind:key=value,..."``, e.g. ``"setwise:model=smollm2,depth=20,reasoning=true"``."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip()
        if kind not in _KINDS:
            raise BadInput(f"unknown reranker kind {kind!r} in {text!r}; choose one of {', '.join(RERANKER_KINDS)}")
        allowed = _options(kind)
        model, opts = None, []
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or (key != "model" and key not in allowed):
                raise BadInput(f"reranker spec {text!r}: bad option {item!r}; options are model, {', '.join(allowed)}")
            if key == "model":
                model = value
            elif key == "heads":  # layer.head pairs: heads=18.7;18.8
                opts.append((key, _heads(value, text)))
            else:
                opts.append((key, _convert(value, allowed[key].default, key, text)))
        return cls(kind=kind, model=model, options=tuple(opts))

    @classmethod
    def from_config(cls, value: str | Mapping[str, Any] | RerankerSpec) -> RerankerSpec:
        """A spec string, or a table such as ``{"kind": "icr", "model": "smollm2", "depth": 20}``."""
        if isinstance(value, RerankerSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if not isinstance(value, Mapping) or "kind" not in value:
            raise BadInput(f"a reranker is a spec string or a table with a 'kind'; got {value!r}")
        rest = {k: v for k, v in value.items() if k not in ("kind", "model")}
        opts = tuple((k, tuple(map(tuple, v)) if k == "heads" and v is not None else v) for k, v in rest.items())
        return cls(kind=value["kind"], model=value.get("model"), options=opts)

    @property
    def model_name(self) -> str:
        return self.model or _KINDS[self.kind][3]

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.kind}({self.model_name}{',' + opts if opts else ''})"


class ModelCache:
    """Loaded models by (role, name), built once; thread-safe. The service keeps one for all its rerankers."""

    def __init__(self):
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, role: str, name: str) -> Any:
        with self._lock:
            key = (role, name)
            if key not in self._models:
                self._models[key] = self._load(role, name)
            return self._models[key]

    @staticmethod
    def _load(role: str, name: str) -> Any:
        if role == "llm":
            from rankstack.rerank.llm.runtime import CausalLM

            return CausalLM(name)
        if role == "encoder":
            from rankstack.retrieval.encoders import make_encoder

            return make_encoder(name)
        return name  # cross-encoders load in their reranker's constructor


def build_reranker(spec: RerankerSpec | str | Mapping[str, Any], cache: ModelCache | None = None) -> Reranker:
    """The reranker a spec describes, loading (or reusing from ``cache``) its model."""
    spec = RerankerSpec.from_config(spec)
    cache = cache or ModelCache()
    role = _KINDS[spec.kind][2]
    model = cache.get(role, spec.model_name)
    reranker = _class(spec.kind)(model, **dict(spec.options))  # heads arrive as (layer, head) tuples already
    reranker.name = spec.label
    return reranker
