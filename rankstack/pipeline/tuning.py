"""``interp:alpha=auto(...)``: choosing the interpolation weight on labelled queries, never on the reported ones.

With a tuning split (BEIR's ``dev``), alpha is the grid value with the best nDCG@10 there, and the whole
pipeline then runs once with it. Without one, k-fold cross-validation over the evaluated queries: each fold runs
with the alpha that is best on the other folds. Either way the runs go through the one executor; tuning only scores
the fusion of the inputs' runs for each alpha.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.pipeline.compile import compile_pipeline
from rankstack.pipeline.core import PipelineOutput
from rankstack.pipeline.resources import Resources
from rankstack.pipeline.spec import FusionSpec, PipelineSpec
from rankstack.records import Qrels, Query, Run

logger = logging.getLogger(__name__)

__all__ = ["ALPHA_GRID", "tune_alpha", "auto_fusions", "run_tuned", "Tuning"]

ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))


def tune_alpha(first: Run, second: Run, qrels: Qrels, *, metric: str = "nDCG@10",
               grid: Sequence[float] = ALPHA_GRID) -> tuple[float, float]:
    """The weight of ``first`` in ``interpolate(first, second)`` that maximises ``metric`` on ``qrels``; returns
    ``(alpha, value)`` (the smallest alpha among ties)."""
    from rankstack.eval.metrics import evaluate
    from rankstack.retrieval.fusion import interpolate

    best = (grid[0], -1.0)
    for a in grid:
        v = evaluate(interpolate(first, second, alpha=a), qrels, [metric]).aggregate[metric]
        if v > best[1] + 1e-12:
            best = (a, v)
    return best


def auto_fusions(spec: PipelineSpec) -> list[FusionSpec]:
    return [n for n in spec.walk() if isinstance(n, FusionSpec) and n.item.get("alpha") == "auto"]


def _with_alphas(spec: PipelineSpec, alphas: dict[int, float]) -> PipelineSpec:
    def fix(node):
        if isinstance(node, FusionSpec) and node.item.get("alpha") == "auto":
            return FusionSpec(node.item.updated(alpha=alphas[_key(node)]), node.inputs)
        return node

    return spec.map(fix)


def _key(node: FusionSpec) -> int:
    return hash((str(node.item.without("alpha")), tuple(str(p) for p in node.inputs)))


@dataclass
class Tuning:
    """How ``alpha=auto`` was resolved: ``alphas`` (one per fold, or one), and where (``dev``, ``2-fold CV``)."""

    alphas: list[float]
    tuned_on: str


def _input_runs(node: FusionSpec, resources: Resources, queries: list[Query], k: int) -> list[Run]:
    return [compile_pipeline(p, resources).run(queries, k).run() for p in node.inputs]


def run_tuned(spec: PipelineSpec, resources: Resources, queries: list[Query], k: int, *,
              tune_queries: list[Query] | None = None, tune_qrels: Qrels | None = None, tuned_on: str = "dev",
              eval_qrels: Qrels | None = None, folds: int = 2, seed: int = 0,
              show_progress: bool | None = None, keep_inputs: bool = False) -> tuple[PipelineOutput, Tuning | None]:
    """Run ``spec`` on ``queries``, resolving every ``alpha=auto`` first: on ``tune_queries``/``tune_qrels`` when
    given, else by ``folds``-fold cross-validation over ``queries`` judged in ``eval_qrels``."""
    nodes = auto_fusions(spec)
    if not nodes:
        return compile_pipeline(spec, resources).run(queries, k, show_progress=show_progress,
                                                     keep_inputs=keep_inputs), None
    if any(len(n.inputs) != 2 or n.item.kind != "interp" for n in nodes):
        raise BadInput("alpha=auto applies to interp fusions of two inputs")
    if tune_queries is not None:
        alphas = {}
        for node in nodes:
            first, second = _input_runs(node, resources, tune_queries, k)
            alpha, value = tune_alpha(first, second, tune_qrels)
            logger.info("alpha of %s tuned on %s: %.2f (nDCG@10 %.4f)", node, tuned_on, alpha, value)
            alphas[_key(node)] = alpha
        out = compile_pipeline(_with_alphas(spec, alphas), resources).run(queries, k, show_progress=show_progress,
                                                                           keep_inputs=keep_inputs)
        return out, Tuning(alphas=list(alphas.values()), tuned_on=tuned_on)
    if eval_qrels is None:
        raise BadInput("alpha=auto needs labelled queries: a dev split, or qrels for cross-validation")
    qids = sorted(q.qid for q in queries if q.qid in eval_qrels.judgments)
    rng = np.random.default_rng(seed)
    rng.shuffle(qids)
    parts = [set(qids[i::folds]) for i in range(folds)]
    runs = {_key(n): _input_runs(n, resources, queries, k) for n in nodes}
    by_qid: dict[str, object] = {}
    timings: dict[str, float] = {}
    stats: dict[str, dict[str, float]] = {}
    inputs: dict[str, dict[str, object]] = {}

    def collect(out: PipelineOutput) -> None:
        by_qid.update({r.query.qid: r for r in out.rankings})
        stats.update(out.stats)
        for name, secs in out.timings.items():
            timings[name] = timings.get(name, 0.0) + secs
        for label, rs in out.inputs.items():
            inputs.setdefault(label, {}).update({r.query.qid: r for r in rs})

    fold_alphas = []
    for i, part in enumerate(parts):
        train = Qrels(judgments={q: j for q, j in eval_qrels.judgments.items()
                                 if any(q in p for j2, p in enumerate(parts) if j2 != i)})
        alphas = {key: tune_alpha(first, second, train)[0] for key, (first, second) in runs.items()}
        fold_alphas.append(next(iter(alphas.values())))
        fold_queries = [q for q in queries if q.qid in part]
        if not fold_queries:
            continue
        collect(compile_pipeline(_with_alphas(spec, alphas), resources).run(
            fold_queries, k, show_progress=show_progress, keep_inputs=keep_inputs))
    rest = [q for q in queries if q.qid not in by_qid]  # unjudged queries: any fold's alpha, here the first
    if rest:
        collect(compile_pipeline(_with_alphas(spec, {key: fold_alphas[0] for key in runs}), resources).run(
            rest, k, show_progress=show_progress, keep_inputs=keep_inputs))
    logger.info("alpha by %d-fold cross-validation: %s", folds, fold_alphas)
    return (PipelineOutput(rankings=[by_qid[q.qid] for q in queries], timings=timings, stats=stats,
                           inputs={label: [got[q.qid] for q in queries if q.qid in got]
                                   for label, got in inputs.items()}),
            Tuning(alphas=fold_alphas, tuned_on=f"{folds}-fold CV"))
