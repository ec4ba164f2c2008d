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
    from rankstack.pipeline.fusion import interpolate

    best = (grid[0], -1.0)
    for a in grid:
        v = evaluate(interpolate(first, second, alpha=a), qrels, [metric]).aggregate[metric]
        if v > best[1] + 1e-12:
            best = (a, v)
    return best


def auto_fusions(spec: PipelineSpec) -> list[FusionSpec]:
    """The ``alpha=auto`` fusions of ``spec``, inner ones before the fusions that contain them."""
    found: list[FusionSpec] = []

    def visit(ps: PipelineSpec) -> None:
        if isinstance(ps.source, FusionSpec):
            for p in ps.source.inputs:
                visit(p)
            if ps.source.item.get("alpha") == "auto":
                found.append(ps.source)

    visit(spec)
    return found


def _with_alphas(spec: PipelineSpec, alphas: dict[int, float]) -> PipelineSpec:
    """``spec`` with each ``alpha=auto`` fusion given its alpha (keys taken from the fusion as written)."""

    def rewrite(ps: PipelineSpec) -> PipelineSpec:
        src = ps.source
        if isinstance(src, FusionSpec):
            item = src.item.updated(alpha=alphas[_key(src)]) if src.item.get("alpha") == "auto" else src.item
            src = FusionSpec(item, tuple(rewrite(p) for p in src.inputs))
        return PipelineSpec(src, ps.stages)

    return rewrite(spec)


def _key(node: FusionSpec) -> int:
    return hash((str(node.item.without("alpha")), tuple(str(p) for p in node.inputs)))


def _bare_auto(ps: PipelineSpec) -> FusionSpec | None:
    src = ps.source
    if isinstance(src, FusionSpec) and src.item.get("alpha") == "auto" and not ps.stages:
        return src
    return None


class _Runs:
    """The runs ``alpha=auto`` fusions read: each input that holds no ``auto`` is run once through the executor;
    an input that is itself an ``auto`` fusion (``interp:alpha=auto(interp:alpha=auto(a, b), c)``) is fused
    from its own inputs with the alpha chosen for it, without running anything again."""

    def __init__(self, nodes: list[FusionSpec], resources: Resources, queries: list[Query], k: int):
        self.leaves: dict[str, Run] = {}
        for node in nodes:
            if node.item.kind != "interp" or len(node.inputs) != 2:
                raise BadInput("alpha=auto applies to interp fusions of two inputs")
            for p in node.inputs:
                if _bare_auto(p) is None:
                    if auto_fusions(p):
                        raise BadInput(f"alpha=auto inside {p} must be the input itself (no stages after it) "
                                       f"to be tuned")
                    if str(p) not in self.leaves:
                        self.leaves[str(p)] = compile_pipeline(p, resources).run(queries, k).run()

    def inputs(self, node: FusionSpec, alphas: dict[int, float]) -> list[Run]:
        return [self.fused(inner, alphas) if (inner := _bare_auto(p)) is not None else self.leaves[str(p)]
                for p in node.inputs]

    def fused(self, node: FusionSpec, alphas: dict[int, float]) -> Run:
        from rankstack.pipeline.fusion import interpolate

        first, second = self.inputs(node, alphas)
        return interpolate(first, second, alpha=alphas[_key(node)])

    def tune(self, nodes: list[FusionSpec], qrels: Qrels) -> dict[int, float]:
        """Alphas for ``nodes`` (inner first), each chosen on ``qrels`` with the inner ones already fixed."""
        alphas: dict[int, float] = {}
        for node in nodes:
            first, second = self.inputs(node, alphas)
            alphas[_key(node)] = tune_alpha(first, second, qrels)[0]
        return alphas


def _value(alphas: dict[int, float], nodes: list[FusionSpec]):
    """One fold's alphas as reported: a number for one fusion, a tuple (inner first) for nested ones."""
    vals = tuple(float(alphas[_key(n)]) for n in nodes)
    return vals[0] if len(vals) == 1 else vals


@dataclass
class Tuning:
    """How ``alpha=auto`` was resolved: ``alphas`` (one per fold, or one; a tuple per fold when fusions are nested,
    inner first), and where (``dev``, ``2-fold CV``)."""

    alphas: list
    tuned_on: str


def run_tuned(spec: PipelineSpec, resources: Resources, queries: list[Query], k: int, *,
              tune_queries: list[Query] | None = None, tune_qrels: Qrels | None = None, tuned_on: str = "dev",
              eval_qrels: Qrels | None = None, folds: int = 2, seed: int = 0,
              show_progress: bool | None = None, keep_inputs: bool = False,
              pool=None, on_error: str = "raise") -> tuple[PipelineOutput, Tuning | None]:
    """Run ``spec`` on ``queries``, resolving every ``alpha=auto`` first: on ``tune_queries``/``tune_qrels`` when
    given, else by ``folds``-fold cross-validation over ``queries`` judged in ``eval_qrels``. ``pool``: a
    :class:`~rankstack.distributed.queries.QueryPool` that runs the reported queries on Ray workers (tuning runs
    here). ``on_error``: as :meth:`~rankstack.pipeline.core.Pipeline.run` (local runs; Ray workers raise)."""
    nodes = auto_fusions(spec)

    def execute(s: PipelineSpec, qs: list[Query]) -> PipelineOutput:
        if pool is not None:
            return pool.run(str(s), qs, k, keep_inputs=keep_inputs, show_progress=show_progress)
        return compile_pipeline(s, resources).run(qs, k, show_progress=show_progress, keep_inputs=keep_inputs,
                                                  on_error=on_error)

    if not nodes:
        return execute(spec, queries), None
    if tune_queries is not None:
        alphas = _Runs(nodes, resources, tune_queries, k).tune(nodes, tune_qrels)
        for node in nodes:
            logger.info("alpha of %s tuned on %s: %.2f", node, tuned_on, alphas[_key(node)])
        out = execute(_with_alphas(spec, alphas), queries)
        return out, Tuning(alphas=[_value(alphas, nodes)], tuned_on=tuned_on)
    if eval_qrels is None:
        raise BadInput("alpha=auto needs labelled queries: a dev split, or qrels for cross-validation")
    qids = sorted(q.qid for q in queries if q.qid in eval_qrels.judgments)
    rng = np.random.default_rng(seed)
    rng.shuffle(qids)
    parts = [set(qids[i::folds]) for i in range(folds)]
    runs = _Runs(nodes, resources, queries, k)
    by_qid: dict[str, object] = {}
    timings: dict[str, float] = {}
    stats: dict[str, dict[str, float]] = {}
    inputs: dict[str, dict[str, object]] = {}
    failed: dict[str, str] = {}

    def collect(out: PipelineOutput) -> None:
        by_qid.update({r.query.qid: r for r in out.rankings})
        failed.update(out.failed)
        stats.update(out.stats)
        for name, secs in out.timings.items():
            timings[name] = timings.get(name, 0.0) + secs
        for label, rs in out.inputs.items():
            inputs.setdefault(label, {}).update({r.query.qid: r for r in rs})

    fold_alphas = []
    for i, part in enumerate(parts):
        train = Qrels(judgments={q: j for q, j in eval_qrels.judgments.items()
                                 if any(q in p for j2, p in enumerate(parts) if j2 != i)})
        alphas = runs.tune(nodes, train)
        fold_alphas.append((i, alphas))
        fold_queries = [q for q in queries if q.qid in part]
        if not fold_queries or (failed and on_error == "stop"):
            continue
        collect(execute(_with_alphas(spec, alphas), fold_queries))
    # unjudged queries: any fold's alpha, here the first
    rest = [q for q in queries if q.qid not in by_qid and q.qid not in failed]
    if failed and on_error == "stop":
        failed.update({q.qid: "not run: the run stopped at an earlier failure" for q in rest})
    elif rest:
        collect(execute(_with_alphas(spec, fold_alphas[0][1]), rest))
    fold_alphas = [_value(a, nodes) for _, a in fold_alphas]
    logger.info("alpha by %d-fold cross-validation: %s", folds, fold_alphas)
    return (PipelineOutput(rankings=[by_qid[q.qid] for q in queries if q.qid in by_qid], timings=timings,
                           stats=stats, inputs={label: [got[q.qid] for q in queries if q.qid in got]
                                                for label, got in inputs.items()},
                           failed={q.qid: failed[q.qid] for q in queries if q.qid in failed}),
            Tuning(alphas=fold_alphas, tuned_on=f"{folds}-fold CV"))
