"""Service settings and collection configs, validated at start-up with precise messages (TOML or YAML)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rankstack.errors import BadInput

__all__ = ["PipelineConfig", "CollectionConfig", "Limits", "Settings", "load_settings"]

IndexKind = Literal["bm25", "dense"]
COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineConfig(_Strict):
    """Retrievers (fused when several), an optional reranker over the top ``rerank_depth``, then the cutoff k."""

    retrievers: list[IndexKind] = Field(default_factory=lambda: ["bm25"], min_length=1, max_length=2)
    fusion: Literal["rrf", "interp"] = "rrf"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="interp weight of the first retriever")
    rrf_k: int = Field(60, ge=0)
    depth: int = Field(100, ge=1, le=1000, description="candidates per retriever before fusion")
    reranker: str = Field("none", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                          description="'none' or the name of a reranker in the settings' rerankers table")
    rerank_depth: int = Field(100, ge=1, le=1000)
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if len(set(self.retrievers)) != len(self.retrievers):
            raise ValueError(f"retrievers {self.retrievers} repeat an entry")
        return self


class CollectionConfig(_Strict):
    name: str = Field(pattern=COLLECTION_NAME_PATTERN)
    indexes: list[IndexKind] = Field(default_factory=lambda: ["bm25"], min_length=1)
    encoder: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                         description="sentence-transformers name or path, or hash[:dim] for a model-free encoder")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _check(self) -> CollectionConfig:
        missing = [r for r in self.pipeline.retrievers if r not in self.indexes]
        if missing:
            raise ValueError(f"pipeline uses {missing} but the collection's indexes are {self.indexes}")
        return self


class Limits(_Strict):
    max_k: int = Field(1000, ge=1)
    max_query_chars: int = Field(2048, ge=1)
    max_batch_queries: int = Field(64, ge=1)
    max_documents_per_request: int = Field(1000, ge=1)
    max_document_chars: int = Field(100_000, ge=1)
    max_rerank_documents: int = Field(1000, ge=1)
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    stage_timeout_s: float = Field(30.0, gt=0, description="search/rerank stage timeout (504)")
    ingest_timeout_s: float = Field(900.0, gt=0, description="ingest timeout; encoding is slow on CPU")
    max_inflight: int = Field(8, ge=1, description="requests processed at once")
    max_queue: int = Field(64, ge=0, description="requests waiting beyond max_inflight before 429s")


class Settings(_Strict):
    data_dir: Path = Path("data")
    api_keys: list[str] = Field(default_factory=list, description="accepted X-API-Key values; empty = open")
    limits: Limits = Field(default_factory=Limits)
    collections: dict[str, CollectionConfig] = Field(default_factory=dict)
    default_collection: CollectionConfig | None = Field(
        None, description="config for collections created by ingest without an explicit config")
    rerank_encoder: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                                description="encoder of the built-in 'embedding' reranker")
    rerankers: dict[str, str | dict[str, Any]] = Field(
        default_factory=dict, description="named rerankers: a spec string ('icr:model=smollm2,depth=20') or a table "
                                          "{kind, model, options...}; 'embedding' is built in")
    default_reranker: str = Field("embedding", description="the reranker /v1/rerank uses when a request names none")

    def reranker_specs(self) -> dict:
        """Every named reranker as a :class:`~rankstack.rerank.factory.RerankerSpec`, the built-in one included."""
        from rankstack.rerank.factory import RerankerSpec

        specs = {"embedding": RerankerSpec("embedding", model=self.rerank_encoder)}
        specs.update({n: RerankerSpec.from_config(v) for n, v in self.rerankers.items()})
        return specs

    @model_validator(mode="after")
    def _check_rerankers(self) -> Settings:
        if "none" in self.rerankers:
            raise ValueError("'none' is reserved (no reranking); rename that reranker")
        try:
            names = set(self.reranker_specs())
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        used = {f"collections.{n}": c.pipeline.reranker for n, c in self.collections.items()}
        if self.default_collection is not None:
            used["default_collection"] = self.default_collection.pipeline.reranker
        used["default_reranker"] = self.default_reranker
        for where, name in used.items():
            if name != "none" and name not in names:
                raise ValueError(f"{where} uses reranker {name!r}; defined rerankers: {sorted(names)}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data):
        if isinstance(data, dict) and isinstance(data.get("collections"), dict):
            data = dict(data)
            data["collections"] = {n: {"name": n, **(c or {})} for n, c in data["collections"].items()}
        return data


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"invalid service config {source}:"]
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)


def load_settings(path: str | os.PathLike | None = None, **overrides) -> Settings:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config; ``overrides`` replace top-level keys."""
    data: dict = {}
    source = "(defaults)"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise BadInput(f"config file {path} not found")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                raise BadInput(f"config {path}: use a .toml, .yaml or .yml file")
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise BadInput(f"config {path} does not parse: {exc}") from None
        except Exception as exc:  # yaml.YAMLError
            raise BadInput(f"config {path} does not parse: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise BadInput(_format(exc, source)) from None
