"""Service settings and collection configs, validated at start-up with precise messages (TOML or YAML).

A collection declares the indexes it keeps (retriever specs: ``bm25``, ``dense``,
``dense:index=(binary:rescore=int8)``...) and its pipeline, either as a spec string
(``"rrf(bm25 % 100, dense % 100) >> first:depth=20"``) or as a table (see :mod:`rankstack.pipeline.spec`). Every
pipeline is parsed here, with the service's named rerankers, so a bad one stops the start, naming the field.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rankstack.errors import BadInput
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

__all__ = ["PipelineConfig", "CollectionConfig", "Limits", "Settings", "load_settings", "COLLECTION_NAME_PATTERN"]

COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineConfig(_Strict):
    """A pipeline as a table: retrievers (fused when several), an optional reranker over the top ``rerank_depth``.
    Or ``spec``: the whole pipeline as a spec string. Requests add their ``k`` and filters."""

    spec: str | None = Field(None, description="the whole pipeline as a spec string (then no other key)")
    retrievers: list[Union[str, dict[str, Any]]] | None = Field(
        None, min_length=1, max_length=8, description="retriever specs, e.g. bm25, dense:index=(binary)")
    fusion: Literal["rrf", "interp"] | None = None
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="interp weight of the first retriever")
    rrf_k: int | None = Field(None, ge=0, description="RRF's rank constant (not a cutoff)")
    retrieve_depth: int | None = Field(None, ge=1, le=10_000, description="candidates fetched per retriever")
    reranker: str | None = Field(None, min_length=1, max_length=512,
                                 description="'none', a name from the settings' rerankers table, or a spec")
    rerank_depth: int | None = Field(None, ge=1, le=1000, description="candidates the reranker reorders")

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data):
        """Configs written by RankStack 0.1 used ``depth`` (now ``retrieve_depth``) and BM25's ``k1``/``b`` as
        pipeline keys (now options of the bm25 retriever)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "depth" in data:
            data.setdefault("retrieve_depth", data.pop("depth"))
        k1, b = data.pop("k1", None), data.pop("b", None)
        if k1 is not None or b is not None:
            opts = ",".join(f"{n}={v}" for n, v in (("k1", k1), ("b", b)) if v is not None)
            data["retrievers"] = [f"bm25:{opts}" if r == "bm25" else r for r in data.get("retrievers") or ["bm25"]]
        return data

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.spec is not None:
            others = [k for k in self.table() if k != "spec"]
            if others:
                raise ValueError(f"'spec' gives the whole pipeline; drop {others} or drop 'spec'")
        return self

    def table(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def merged(self, override: PipelineConfig | None) -> PipelineConfig:
        """This pipeline with the keys an override sets; a ``spec`` on either side wins whole."""
        if override is None:
            return self
        if override.spec is not None:
            return override
        if self.spec is not None:
            if not override.retrievers:
                raise BadInput("this collection's pipeline is a spec string: give the override as a spec string "
                               "(pipeline: \"...\") or name its retrievers")
            return override
        base = self.table()
        base.setdefault("retrievers", ["bm25"])
        return PipelineConfig.model_validate({**base, **override.table()})

    def to_spec(self, names=None, filters=None):
        from rankstack.pipeline.spec import pipeline_from_table

        table = self.table()
        if self.spec is None:
            table.setdefault("retrievers", ["bm25"])
            table.setdefault("retrieve_depth", 100)
        return pipeline_from_table(table, names, filters)


def _pipeline_config(value) -> Any:
    return {"spec": value} if isinstance(value, str) else value


def index_key(item, encoder: str) -> str:
    """The stored index a retriever item reads, as its kind resolves it (``bm25``; a dense index: encoder and index
    spec; the sparse impacts of one model; the token vectors of one encoder). Search-time options (query mode,
    engine, ``k1``, ``nprobe``) do not change it."""
    from rankstack.retrieval import kinds

    return kinds.resolve(item, {"model": encoder})[1].index_key


class ShardedConfig(_Strict):
    """A sharded collection served read-only: built by ``rankstack index --shards N``, rebuilt (not written) to
    change."""

    path: str = Field(description="the sharded collection's folder (reachable by every Ray worker)")
    ray_address: str | None = Field(None, description="serve shards from Ray actors at this address (local, auto, "
                                                      "HOST:PORT); none: every shard in the service's process")
    replicas: int = Field(1, ge=1, le=16, description="Ray actors per shard; a dead one's queries go to another")
    allow_partial: bool = Field(False, description="answer from the surviving shards when one fails, flagging the "
                                                   "response partial (default: the request fails with 503)")
    timeout_s: float = Field(30.0, gt=0, description="how long a shard may take to answer before a retry")


class CollectionConfig(_Strict):
    name: str = Field(pattern=COLLECTION_NAME_PATTERN)
    indexes: list[str] = Field(default_factory=lambda: ["bm25"], min_length=1, max_length=8,
                               description="retriever specs whose indexes the collection keeps: bm25, dense, "
                                           "dense:index=(binary:rescore=int8), dense:model=..., sparse "
                                           "(learned sparse, = splade; splade:model=... for another model), maxsim "
                                           "(multi-vector token vectors; serve maxsim, muvera and plaid searches)")
    encoder: str = Field(DEFAULT_DENSE_MODEL,
                         description="model of dense indexes that name none: a sentence-transformers name or path, "
                                     "or hash[:dim] for a model-free encoder")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    bm25_updates: Literal["incremental", "rebuild"] = Field(
        "incremental", description="incremental: a write adds a Lucene segment and marks replaced or deleted "
                                   "versions deleted (merged away in the background; until then they count in BM25's "
                                   "statistics, as in Elasticsearch); rebuild: every write rebuilds the index (exact "
                                   "statistics, at a cost that grows with the collection)")
    index_checkpoint_docs: int = Field(1000, ge=1, description="dense, sparse and multi-vector indexes take writes "
                                                              "in memory and are saved after this many changed "
                                                              "documents (1: on every write); the log is durable, so a "
                                                              "crash replays at most this many from it")
    index_checkpoint_seconds: float = Field(60.0, ge=0, description="... or at the first write this long after the "
                                                                    "last save (0: every write)")
    index_merge_docs: int = Field(4096, ge=1, description="a checkpoint writes the documents changed since the last "
                                                          "one as a segment beside the index; the segments are merged "
                                                          "into it in the background once they hold this many "
                                                          "documents and a quarter of the index")
    log_compact_bytes: int = Field(64 << 20, ge=0, description="the document log is rewritten with live documents "
                                                               "only once it is this long and over half of it is "
                                                               "replaced or deleted versions (0: never)")
    relevance_adapter: str | None = Field(None, description="a relevance adapter file (`rankstack relevance fit`) "
                                                            "fitted on this collection's pipeline: requests may then "
                                                            "ask for min_relevance, and specs use filter(0.5)")
    sharded: ShardedConfig | None = Field(None, description="front a sharded collection (read-only); its indexes "
                                                            "must be among the shards' (bm25, dense)")

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data):
        if isinstance(data, dict) and isinstance(data.get("pipeline"), str):
            data = {**data, "pipeline": _pipeline_config(data["pipeline"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> CollectionConfig:
        keys = self.index_keys()  # raises on a bad or repeated index spec
        p = self.pipeline
        if p.spec is None:  # the table's retrievers can be checked without the named rerankers
            from rankstack.pipeline.spec import pipeline_from_table

            table = {k: v for k, v in p.table().items() if k not in ("reranker", "rerank_depth")}
            table.setdefault("retrievers", ["bm25"])
            try:
                spec = pipeline_from_table(table)
            except BadInput as exc:
                raise ValueError(str(exc)) from None
            self.check_retrievers(spec, keys)
        if self.relevance_adapter:  # a missing or foreign file stops the start, not the first request
            from rankstack.pipeline.relevance import RelevanceModel

            try:
                RelevanceModel.load(self.relevance_adapter)
            except BadInput as exc:
                raise ValueError(str(exc)) from None
        return self

    def index_keys(self) -> dict[str, str]:
        """index key -> the spec as configured; a ``bm25`` index has the key ``bm25``."""
        from rankstack.pipeline.spec import RetrieverSpec, parse_pipeline

        keys: dict[str, str] = {}
        for text in self.indexes:
            try:
                spec = parse_pipeline(text)
            except BadInput as exc:
                raise ValueError(str(exc)) from None
            if not isinstance(spec.source, RetrieverSpec) or spec.stages:
                raise ValueError(f"indexes: {text!r} is not a retriever spec (bm25, dense, dense:index=(...), sparse)")
            key = index_key(spec.source.item, self.encoder)
            if key in keys:
                raise ValueError(f"indexes {keys[key]!r} and {text!r} are the same index")
            keys[key] = text
        return keys

    def check_retrievers(self, spec, keys: dict[str, str] | None = None) -> None:
        """Every retriever of ``spec`` must have its index among the collection's."""
        keys = keys if keys is not None else self.index_keys()
        missing = []
        for r in spec.retrievers():
            key = index_key(r.item, self.encoder)
            if key not in keys:
                missing.append(str(r.item))
        if missing:
            raise BadInput(f"pipeline uses {missing} but the collection's indexes are {self.indexes}")


class Limits(_Strict):
    max_k: int = Field(1000, ge=1)
    max_query_chars: int = Field(2048, ge=1, description="longest query text a request may send")
    max_batch_queries: int = Field(64, ge=1)
    max_documents_per_request: int = Field(1000, ge=1)
    max_document_chars: int = Field(100_000, ge=1)
    max_rerank_documents: int = Field(1000, ge=1)
    max_context_tokens: int = Field(32_768, ge=1, description="largest context_tokens budget a search may ask for")
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    stage_timeout_s: float = Field(30.0, gt=0, description="search/rerank timeout (504)")
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
    rerank_encoder: str = Field(DEFAULT_DENSE_MODEL, description="encoder of the built-in 'embedding' reranker")
    rerankers: dict[str, str | dict[str, Any]] = Field(
        default_factory=dict, description="named rerankers: a spec string ('icr:model=smollm2,depth=20') or a table "
                                          "{kind, model, options...}; 'embedding' is built in")
    default_reranker: str = Field("embedding", description="the reranker /v1/rerank uses when a request names none")
    context_tokenizer: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                                   description="tokenizer that counts a search's packed context (context_tokens): a "
                                               "Hugging Face name or folder; give your generator's")

    def reranker_specs(self) -> dict:
        """Every named reranker as a :class:`~rankstack.rerank.factory.RerankerSpec`, the built-in one included."""
        from rankstack.rerank.factory import RerankerSpec

        specs = {"embedding": RerankerSpec("embedding", model=self.rerank_encoder)}
        specs.update({n: RerankerSpec.from_config(v) for n, v in self.rerankers.items()})
        return specs

    def pipeline_spec(self, config: CollectionConfig, override: PipelineConfig | None = None, filters=None):
        """The checked spec of a collection's pipeline (with a request's override and filters)."""
        spec = config.pipeline.merged(override).to_spec(self.reranker_specs(), filters)
        config.check_retrievers(spec)
        return spec

    @model_validator(mode="after")
    def _check_rerankers(self) -> Settings:
        from rankstack.rerank.factory import RERANKER_KINDS

        if "none" in self.rerankers:
            raise ValueError("'none' is reserved (no reranking); rename that reranker")
        try:
            names = self.reranker_specs()
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        used = {f"collections.{n}": c for n, c in self.collections.items()}
        if self.default_collection is not None:
            used["default_collection"] = self.default_collection
        for where, cfg in used.items():
            r = cfg.pipeline.reranker
            if r not in (None, "none") and ":" not in r and r not in names and r not in RERANKER_KINDS:
                raise ValueError(f"{where} uses reranker {r!r}; defined rerankers: {sorted(names)} (or a reranker "
                                 f"spec such as 'first:depth=20')")
            try:
                self.pipeline_spec(cfg)
            except BadInput as exc:
                raise ValueError(f"{where}.pipeline: {exc}") from None
        if self.default_reranker not in names:
            raise ValueError(f"default_reranker uses reranker {self.default_reranker!r}; defined rerankers: "
                             f"{sorted(names)}")
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
