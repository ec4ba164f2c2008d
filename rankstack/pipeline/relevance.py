"""The relevance filter stage: a pipeline's scores turned into a calibrated probability of relevance by a fitted
model (:mod:`rankstack.rag.relevance` fits them, ``rankstack relevance fit``), and each list cut at one global
threshold, so that a RAG pipeline gets only what is relevant (possibly nothing). Spec: ``>> relevance:adapter=FILE``,
or ``>> filter(0.5)`` with the resources' default adapter; the stage replaces each kept candidate's score by its
probability.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.pipeline.core import Stage
from rankstack.pipeline.spec import CutSpec, FilterSpec, FusionSpec, PipelineSpec, RelevanceSpec
from rankstack.records import Candidate, Ranking

logger = logging.getLogger(__name__)

__all__ = ["RelevanceModel", "RelevanceFilter", "METHODS", "score_key", "FORMAT"]

METHODS = ("adapter", "logistic")
FORMAT = "rankstack-relevance/1"
_EPS = 1e-6


def score_key(spec) -> str:
    """What decides the scores a filter sees: the pipeline spec without cutoffs and metadata filters (they select,
    they do not rescore), as text. An adapter applies only where this key equals the one it was fitted on."""
    def strip(ps: PipelineSpec) -> PipelineSpec:
        src = ps.source
        if isinstance(src, FusionSpec):
            src = FusionSpec(src.item, tuple(strip(p) for p in src.inputs))
        return PipelineSpec(src, tuple(s for s in ps.stages if not isinstance(s, (CutSpec, FilterSpec, RelevanceSpec))))

    return str(strip(spec))


# ---- features --------------------------------------------------------------------------------------------------

def _list_stats(scores: np.ndarray) -> np.ndarray:
    """Per-list statistics: top score, mean, spread (std), as the adapter's and the baseline's query context."""
    if scores.size == 0:
        return np.zeros(3, dtype=np.float64)
    return np.array([scores[0], scores.mean(), scores.std()], dtype=np.float64)


@dataclass
class _Batch:
    """Candidates of many queries, flattened: ``score``/``qrow`` per candidate; ``stats``/``emb`` per query."""

    score: np.ndarray
    qrow: np.ndarray
    stats: np.ndarray
    emb: np.ndarray | None
    label: np.ndarray | None = None


def _batch(rankings: Sequence[Ranking], depth: int, emb: np.ndarray | None,
           qrels: Mapping[str, Mapping[str, int]] | None = None) -> _Batch:
    scores, rows, labels, stats = [], [], [], []
    for i, r in enumerate(rankings):
        s = np.array([c.score for c in r.candidates[:depth]], dtype=np.float64)
        scores.append(s)
        rows.append(np.full(s.size, i, dtype=np.int64))
        stats.append(_list_stats(s))
        if qrels is not None:
            rel = qrels.get(r.query.qid, {})
            labels.append(np.array([1.0 if rel.get(c.docid, 0) > 0 else 0.0 for c in r.candidates[:depth]]))
    return _Batch(score=np.concatenate(scores) if scores else np.zeros(0), qrow=np.concatenate(rows) if rows else
                  np.zeros(0, dtype=np.int64), stats=np.stack(stats) if stats else np.zeros((0, 3)), emb=emb,
                  label=np.concatenate(labels) if labels else None)


# ---- the model -------------------------------------------------------------------------------------------------

@dataclass
class RelevanceModel:
    """A fitted score-to-probability map. ``pipeline``: the :func:`score_key` of the pipeline it was fitted on;
    ``encoder``: the query encoder whose embeddings the adapter reads (None for ``logistic``); ``depth``: how many
    top candidates per query it scores (list statistics are taken over them); ``norm``: global standardisation of
    scores and list statistics; ``params``: the weights."""

    method: str
    pipeline: str
    threshold: float
    depth: int
    norm: dict[str, list[float]]
    params: dict[str, list]
    encoder: str | None = None
    trained_on: dict[str, object] = field(default_factory=dict)

    # -- probabilities --
    def _torch_params(self):
        import torch

        return {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in self.params.items()}

    def _logits(self, b: _Batch, params=None):
        import torch

        p = params if params is not None else self._torch_params()
        mu, sd = self.norm["score"]
        smu, ssd = np.asarray(self.norm["stats_mean"]), np.asarray(self.norm["stats_std"])
        s = torch.tensor((b.score - mu) / sd, dtype=torch.float64)
        st = torch.tensor((b.stats - smu) / ssd, dtype=torch.float64)
        rows = torch.as_tensor(b.qrow)
        if self.method == "logistic":
            top, mean, spread = (torch.tensor(b.stats[:, j], dtype=torch.float64)[rows] for j in range(3))
            raw = torch.tensor(b.score, dtype=torch.float64)
            z = (raw - mean) / (spread + _EPS)
            gap = (raw - top) / sd
            x = torch.stack([s, z, gap], dim=1)
            return x @ p["w"] + p["c"]
        if b.emb is None:
            raise BadInput("the relevance adapter needs query embeddings; build the filter with its encoder")
        q = torch.cat([torch.tensor(b.emb, dtype=torch.float64), st], dim=1)
        h = torch.tanh(q @ p["w1"] + p["b1"])
        ab = h @ p["w2"] + p["b2"]  # [queries, 2]
        a = torch.nn.functional.softplus(ab[:, 0])[rows]
        return a * s + ab[:, 1][rows]

    def probabilities(self, rankings: Sequence[Ranking], query_embeddings: np.ndarray | None = None
                      ) -> list[np.ndarray]:
        """P(relevant) for the top ``depth`` candidates of each ranking, never rising down a list: the adapter is
        monotone by construction; the baseline's per-query slope could turn negative, and a running minimum keeps
        every list's order."""
        import torch

        b = _batch(rankings, self.depth, query_embeddings)
        with torch.no_grad():
            p = torch.sigmoid(self._logits(b)).numpy()
        out, at = [], 0
        for r in rankings:
            n = min(len(r.candidates), self.depth)
            out.append(np.minimum.accumulate(p[at:at + n]))
            at += n
        return out

    # -- file --
    def to_dict(self) -> dict:
        return {"format": FORMAT, "method": self.method, "pipeline": self.pipeline, "threshold": self.threshold,
                "depth": self.depth, "encoder": self.encoder, "norm": self.norm, "params": self.params,
                "trained_on": self.trained_on}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelevanceModel:
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"relevance adapter {path} not found; fit one with `rankstack relevance fit --dataset ... "
                           f"--split train --pipeline ... --output {path}`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(f"relevance adapter {path} is not readable JSON ({exc}); fit it again") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BadInput(f"{path} is not a RankStack relevance adapter (format {FORMAT!r}); fit one with "
                           f"`rankstack relevance fit`")
        if d.get("method") not in METHODS:
            raise BadInput(f"{path}: unknown method {d.get('method')!r}; methods are {', '.join(METHODS)}")
        return cls(method=d["method"], pipeline=d["pipeline"], threshold=float(d["threshold"]), depth=int(d["depth"]),
                   norm=d["norm"], params=d["params"], encoder=d.get("encoder"), trained_on=d.get("trained_on", {}))


# ---- fitting ---------------------------------------------------------------------------------------------------


# ---- the pipeline stage ----------------------------------------------------------------------------------------

class RelevanceFilter(Stage):
    """Keep the candidates whose P(relevant) is at least ``min_relevance`` (default: the adapter's threshold);
    their scores become those probabilities, in the input order (probabilities never rise down a list). Reads the top
    ``depth`` candidates the adapter was fitted on; below them nothing is kept. ``encoder``: the query encoder the
    adapter reads (an object with ``encode_queries``), needed for ``adapter`` models."""

    base_label = "relevance"

    def __init__(self, model: RelevanceModel | str | os.PathLike, *, min_relevance: float | None = None,
                 encoder=None):
        model = model if isinstance(model, RelevanceModel) else RelevanceModel.load(model)
        if min_relevance is not None:
            if isinstance(min_relevance, bool) or not isinstance(min_relevance, (int, float)) or \
                    not 0.0 <= float(min_relevance) <= 1.0:
                raise BadInput(f"min_relevance is a probability: it must lie in [0, 1], got {min_relevance!r}")
        if model.method == "adapter" and encoder is None:
            from rankstack.models import ModelCache
            from rankstack.retrieval.encoders import cached_encoder

            encoder = cached_encoder(ModelCache(), model.encoder)
        self.model = model
        self.min_relevance = model.threshold if min_relevance is None else float(min_relevance)
        self.encoder = encoder
        self.last_probabilities: dict[str, dict[str, float]] = {}

    def need(self, k: int) -> int:
        return max(k, self.model.depth)

    def apply(self, rankings, ctx=None):
        todo = [r for r in rankings if r.candidates]
        emb = None
        if self.model.method == "adapter" and todo:
            emb = np.asarray(self.encoder.encode_queries([r.query.text for r in todo]), dtype=np.float32)
        probs = dict(zip([id(r) for r in todo], self.model.probabilities(todo, emb))) if todo else {}
        out = []
        self.last_probabilities = {}
        for r in rankings:
            p = probs.get(id(r))
            if p is None:
                out.append(Ranking(query=r.query))
                continue
            self.last_probabilities[r.query.qid] = {c.docid: float(x) for c, x in zip(r.candidates, p)}
            keep = [Candidate(docid=c.docid, score=float(x), document=c.document)
                    for c, x in zip(r.candidates, p) if x >= self.min_relevance]
            out.append(Ranking(query=r.query, candidates=tuple(keep)))
        return out

    def describe(self) -> str:
        return f">> relevance:method={self.model.method},min={self.min_relevance:g}"
