"""Relevance filtering: a pipeline's scores turned into a calibrated probability of relevance, and the list cut at
one global threshold, so that a RAG pipeline gets only what is relevant (possibly nothing).

Two mappings, fitted on labelled queries by :func:`fit` (``rankstack relevance fit``) and saved as a small JSON
file that records the pipeline it was fitted on:

- ``adapter`` (after Rossi et al., "Relevance Filtering for Embedding-based Retrieval", CIKM 2024, the "Cosine
  Adapter"): a query-dependent monotone map ``p = sigmoid(a(q) * s + b(q))`` of the (globally standardised) score
  ``s``. ``a(q) > 0`` and ``b(q)`` come from a small MLP over the query's embedding and its score list's statistics
  (top score, mean, spread), so "0.6 cosine" can mean relevant for one query and not for another, while the
  order within a list never changes. The paper feeds the query embedding only (dense scores); the list
  statistics let the same adapter serve BM25 and fused scores, whose scale varies from query to query.
- ``logistic``: the score-distribution baseline: logistic regression on the raw score, its per-query z-score and
  its gap to the top score.

The threshold is chosen on the training queries (the one maximising mean per-query F1) and stored in the file;
``min_relevance`` overrides it. The filter stage (:class:`RelevanceFilter`, spec ``>> relevance:adapter=FILE`` or
``>> filter(0.5)`` with the resources' default adapter) replaces each kept candidate's score by its probability.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.pipeline.core import Stage
from rankstack.records import Candidate, Qrels, Ranking

logger = logging.getLogger(__name__)

__all__ = ["RelevanceModel", "RelevanceFilter", "fit", "METHODS", "set_metrics", "calibration_error",
           "choose_threshold", "score_key", "FORMAT"]

METHODS = ("adapter", "logistic")
FORMAT = "rankstack-relevance/1"
_EPS = 1e-6


def score_key(spec) -> str:
    """What decides the scores a filter sees: the pipeline spec without cutoffs and metadata filters (they select,
    they do not rescore), as text. An adapter applies only where this key equals the one it was fitted on."""
    from rankstack.pipeline.spec import CutSpec, FilterSpec, FusionSpec, PipelineSpec, RelevanceSpec

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

def _init_params(method: str, emb_dim: int, hidden: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if method == "logistic":
        return {"w": np.zeros(3), "c": np.zeros(1)}
    d_in = emb_dim + 3
    return {"w1": rng.normal(0, 1 / math.sqrt(d_in), (d_in, hidden)), "b1": np.zeros(hidden),
            "w2": rng.normal(0, 0.01, (hidden, 2)), "b2": np.array([0.5, 0.0])}


def fit(rankings: Sequence[Ranking], qrels: Qrels, *, method: str = "adapter", pipeline: str, depth: int = 100,
        query_embeddings: np.ndarray | None = None, encoder: str | None = None, hidden: int = 32,
        steps: int = 600, lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0,
        holdout: float = 0.1, trained_on: Mapping[str, object] | None = None) -> RelevanceModel:
    """Fit ``method`` on ``rankings`` (a pipeline's output for labelled queries) against ``qrels`` (grade > 0 is
    relevant), by full-batch Adam on the binary cross-entropy. ``holdout`` of the queries pick the step with the
    lowest held-out loss; the threshold is then chosen on all training queries (:func:`choose_threshold`)."""
    import torch

    if method not in METHODS:
        raise BadInput(f"unknown relevance method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
        raise BadInput(f"depth must be a positive integer, got {depth!r}")
    qd = qrels.to_dict()
    rankings = [r for r in rankings if r.query.qid in qd and r.candidates]
    if len(rankings) < 10:
        raise BadInput(f"fitting a relevance adapter needs labelled queries with candidates; got {len(rankings)}")
    if method == "adapter" and (query_embeddings is None or encoder is None):
        raise BadInput("the adapter needs query embeddings and the encoder's name")
    if query_embeddings is not None and len(query_embeddings) != len(rankings):
        raise BadInput("give one query embedding per ranking (after dropping unjudged queries)")
    b = _batch(rankings, depth, query_embeddings, qd)
    if b.label.sum() == 0 or b.label.sum() == b.label.size:
        raise BadInput("the training candidates are all relevant or all irrelevant; nothing to fit")
    norm = {"score": [float(b.score.mean()), float(b.score.std() or 1.0)],
            "stats_mean": b.stats.mean(0).tolist(), "stats_std": np.where(b.stats.std(0) > 0, b.stats.std(0), 1.0).tolist()}
    model = RelevanceModel(method=method, pipeline=pipeline, threshold=0.5, depth=depth, norm=norm, params={},
                           encoder=encoder if method == "adapter" else None, trained_on=dict(trained_on or {}))
    rng = np.random.default_rng(seed)
    init = _init_params(method, 0 if query_embeddings is None else query_embeddings.shape[1], hidden, rng)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    order = rng.permutation(len(rankings))
    n_val = max(1, int(len(rankings) * holdout))
    val_q = set(order[:n_val].tolist())
    is_val = torch.tensor([int(q) in val_q for q in b.qrow])
    y = torch.tensor(b.label, dtype=torch.float64)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params.values(), lr=lr, weight_decay=weight_decay)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    best = (float("inf"), {k: v.detach().clone() for k, v in params.items()}, 0)
    for step in range(steps):
        logits = model._logits(b, params)
        loss = bce(logits[~is_val], y[~is_val])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = float(bce(model._logits(b, params)[is_val], y[is_val]))
        if val < best[0]:
            best = (val, {k: v.detach().clone() for k, v in params.items()}, step)
    model.params = {k: v.numpy().tolist() for k, v in best[1].items()}
    probs = model.probabilities(rankings, query_embeddings)
    model.threshold = choose_threshold(rankings, probs, qrels)
    model.trained_on.update(queries=len(rankings), candidates=int(b.label.size), positives=int(b.label.sum()),
                            heldout_loss=round(best[0], 5), best_step=best[2], steps=steps)
    logger.info("fitted %s on %d queries (%d candidates); held-out loss %.4f at step %d; threshold %.2f",
                method, len(rankings), b.label.size, best[0], best[2], model.threshold)
    return model


def choose_threshold(rankings: Sequence[Ranking], probs: Sequence[np.ndarray], qrels: Qrels,
                     grid: Sequence[float] | None = None) -> float:
    """The threshold (on a 0.01 grid) with the highest mean per-query F1 of the kept sets."""
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2) if grid is None else grid
    best_t, best_f = 0.5, -1.0
    for t in grid:
        kept = {r.query.qid: [c.docid for c, p in zip(r.candidates, pr) if p >= t] for r, pr in zip(rankings, probs)}
        f = set_metrics(kept, qrels)["F1"]
        if f > best_f + 1e-12:
            best_t, best_f = float(t), f
    return best_t


# ---- measuring -------------------------------------------------------------------------------------------------

def set_metrics(kept: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Set metrics of kept lists, averaged over the judged queries: precision (0 for an empty list), recall against
    every relevant document in the qrels, F1, the share of queries left with nothing, the mean list length, and
    micro-averaged precision/recall/F1 over all kept pairs."""
    qd = qrels.to_dict()
    ps, rs, fs, empty, lengths = [], [], [], 0, []
    tp_all = kept_all = rel_all = 0
    for qid, judged in qd.items():
        rel = {d for d, g in judged.items() if g > 0}
        if not rel:
            continue
        got = list(kept.get(qid, ()))
        tp = sum(d in rel for d in got)
        p = tp / len(got) if got else 0.0
        r = tp / len(rel)
        ps.append(p)
        rs.append(r)
        fs.append(2 * p * r / (p + r) if p + r else 0.0)
        empty += not got
        lengths.append(len(got))
        tp_all, kept_all, rel_all = tp_all + tp, kept_all + len(got), rel_all + len(rel)
    n = max(1, len(ps))
    mp = tp_all / kept_all if kept_all else 0.0
    mr = tp_all / rel_all if rel_all else 0.0
    return {"P": sum(ps) / n, "R": sum(rs) / n, "F1": sum(fs) / n, "empty": empty / n,
            "mean_kept": sum(lengths) / n, "microP": mp, "microR": mr,
            "microF1": 2 * mp * mr / (mp + mr) if mp + mr else 0.0, "queries": len(ps)}


def calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: ``sum_b |B|/N * |mean(p in B) - mean(y in B)|`` over equal-width bins."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if probs.size == 0:
        return 0.0
    idx = np.minimum((probs * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / probs.size * abs(probs[m].mean() - labels[m].mean())
    return float(err)


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


def fit_on_dataset(dataset, pipeline: str, *, split: str = "train", method: str = "adapter", depth: int = 100,
                   workspace=None, index_root=None, encoder: str | None = None, show_progress: bool | None = None,
                   **options) -> RelevanceModel:
    """Run ``pipeline`` over a BEIR dataset's ``split`` queries (indexes from the dataset workspace) and fit
    ``method`` on its top ``depth`` against the split's qrels. ``encoder``: the adapter's query encoder (default:
    the workspace's dense model)."""
    from rankstack.eval.datasets import BeirDataset, load_beir
    from rankstack.pipeline.compile import compile_pipeline
    from rankstack.pipeline.spec import RelevanceSpec, parse_pipeline
    from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT, DatasetWorkspace

    spec = parse_pipeline(pipeline)
    if any(isinstance(s, RelevanceSpec) for s in spec.walk()):
        raise BadInput("fit the adapter on the pipeline before its relevance filter, not on one that has it")
    ds = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    ws = workspace or DatasetWorkspace(ds, index_root or DEFAULT_INDEX_ROOT)
    queries = [q for q in ds.queries.values()]
    out = compile_pipeline(spec, ws).run(queries, depth, show_progress=show_progress)
    rankings = [r for r in out.rankings if r.candidates]
    emb = None
    encoder = encoder or ws.default_model
    if method == "adapter":
        from rankstack.retrieval.encoders import cached_encoder

        emb = np.asarray(cached_encoder(ws.models, encoder).encode_queries([r.query.text for r in rankings]),
                         dtype=np.float32)
    return fit(rankings, ds.qrels, method=method, pipeline=score_key(spec), depth=depth, query_embeddings=emb,
               encoder=encoder, trained_on={"dataset": ds.name, "split": ds.split}, **options)
