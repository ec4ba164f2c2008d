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

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.eval.metrics import set_metrics
from rankstack.pipeline.relevance import FORMAT, METHODS, RelevanceFilter, RelevanceModel, _batch, score_key
from rankstack.records import Qrels, Ranking

logger = logging.getLogger(__name__)

__all__ = ["RelevanceModel", "RelevanceFilter", "fit", "METHODS", "set_metrics", "calibration_error",
           "choose_threshold", "score_key", "FORMAT", "fit_on_dataset"]


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


# ---- measuring ---------------------------------------------------------------------------------------------------

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
