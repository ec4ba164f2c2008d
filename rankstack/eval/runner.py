"""``rankstack eval``: run pipeline specs over a BEIR dataset's queries and evaluate them.

Every pipeline (a preset such as ``hybrid-rrf``, a spec string, or ``name=spec``) is compiled against one
:class:`~rankstack.pipeline.workspace.DatasetWorkspace` and run by the one executor; this module only picks the
queries, resolves ``alpha=auto`` on labelled queries that are not reported (:mod:`rankstack.eval.tuning`), and
evaluates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from rankstack.errors import BadInput
from rankstack.eval.datasets import BeirDataset, load_beir
from rankstack.eval.metrics import DEFAULT_METRICS, EvalResult, evaluate
from rankstack.pipeline.spec import PRESETS, PipelineSpec, RelevanceSpec, parse_pipeline, split_named
from rankstack.eval.tuning import auto_fusions, run_tuned
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT, DatasetWorkspace
from rankstack.records import Qrels, Run
from rankstack.retrieval import kinds
from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "PipelineResult", "run_pipelines", "named_specs"]


@dataclass(frozen=True, kw_only=True)
class PipelineResult:
    """One evaluated pipeline: its run, metrics, and stats (``qps``, ``seconds_<stage>``, ``alpha``...).
    ``input_of``: for the row holding what a pipeline's first rerank stage received, that pipeline's name."""

    name: str
    spec: PipelineSpec
    run: Run
    result: EvalResult
    stats: Mapping[str, object]
    input_of: str | None = None
    failed: Mapping[str, str] = field(default_factory=dict)
    """Queries this pipeline could not finish (qid -> why; ``on_error=stop|skip``): its run and metrics cover the
    others only."""


def named_specs(pipelines: Sequence[str]) -> dict[str, PipelineSpec]:
    """``name=spec``, a preset name, or a spec (named by its own text); every spec is checked before anything
    runs, and names must be unique."""
    out: dict[str, PipelineSpec] = {}
    for text in pipelines:
        name, body = split_named(text)
        spec = parse_pipeline(body)
        name = name or body.strip()
        if name in out:
            raise BadInput(f"pipeline name {name!r} is given twice; name them: --pipeline NAME=SPEC")
        out[name] = spec
    if not out:
        raise BadInput("no pipeline given")
    return out


def run_pipelines(dataset: str | BeirDataset, pipelines: Sequence[str], *, split: str = "test",
                  index_root: str | Path = DEFAULT_INDEX_ROOT, k: int = 1000,
                  metrics: Sequence[str] = DEFAULT_METRICS, tune_split: str | None = "auto",
                  model: str = DEFAULT_DENSE_MODEL, k1: float = 0.9, b: float = 0.4, threads: int | None = None,
                  workspace: DatasetWorkspace | None = None, show_progress: bool | None = None,
                  relevance_adapter: str | None = None, pool=None,
                  on_error: str = "raise") -> tuple[BeirDataset, dict[str, PipelineResult], DatasetWorkspace]:
    """Run and evaluate each pipeline. ``alpha=auto`` (e.g. the ``hybrid-interp`` preset) is tuned on
    ``tune_split`` (``auto``: the dataset's ``dev`` split when it has one and it is not the evaluated split,
    else 2-fold cross-validation over the evaluated queries).

    A pipeline with rerank stages also yields a row ``<name> [rerank input]``: the ranking its first rerank stage
    received (cut to ``k``), at no extra cost, so that a reranker is always measured against its own input.

    A pipeline with a relevance filter (``>> filter(0.5)``, ``>> relevance:adapter=FILE``; ``relevance_adapter``
    is the default adapter file) also gets set metrics of what it kept: ``set_P``, ``set_R``, ``set_F1`` (means
    over queries), ``empty`` (share of queries left with nothing) and ``kept`` (mean list length).

    ``workspace``: any pipeline resources over the dataset's corpus (default: its index cache; a
    :class:`~rankstack.distributed.sharded.ShardedResources` evaluates a sharded collection). ``pool``: a
    :class:`~rankstack.distributed.queries.QueryPool` whose Ray workers run the queries; indexes are built here
    first, so workers only open them.

    ``on_error``: ``raise`` (default), or ``stop``/``skip`` as :meth:`~rankstack.pipeline.core.Pipeline.run`: a
    pipeline with queries it could not finish keeps the others (:attr:`PipelineResult.failed`); with ``stop`` the
    pipelines after it do not run."""
    specs = named_specs(pipelines)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    ds = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    ws = workspace or DatasetWorkspace(ds, index_root, model=model, k1=k1, b=b, threads=threads)
    if relevance_adapter:
        ws.relevance_adapter = str(relevance_adapter)
    queries = list(ds.queries.values())
    tune = None
    if any(auto_fusions(s) for s in specs.values()):
        tune = _tune_set(ds, split, tune_split)
    out: dict[str, PipelineResult] = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        kw = ({"tune_queries": list(tune.queries.values()), "tune_qrels": tune.qrels, "tuned_on": tune.split}
              if tune is not None else {"eval_qrels": ds.qrels})
        reranks = bool(spec.rerankers())
        if pool is not None:
            for r in spec.retrievers():  # build (or check) every index once, before workers open them
                ws.retriever(r.item)
        output, tuning = run_tuned(spec, ws, queries, k, show_progress=show_progress, keep_inputs=reranks,
                                   pool=pool, on_error=on_error, **kw)
        # a partial run is scored on the queries it finished (its row says how many failed)
        qrels = (Qrels(judgments={q: j for q, j in ds.qrels.judgments.items() if q not in output.failed})
                 if output.failed else ds.qrels)
        run = output.run(name)
        stats = _stats(spec, ws, output, tuning, qrels, time.perf_counter() - t0)
        if reranks and output.inputs:
            label, before = next(iter(output.inputs.items()))
            iname = f"{name} [{label} input]"
            irun = Run.from_rankings(before, name=iname)
            out[iname] = PipelineResult(name=iname, spec=spec, run=irun, result=evaluate(irun, qrels, metrics),
                                        stats={}, input_of=name)
        out[name] = PipelineResult(name=name, spec=spec, run=run, result=evaluate(run, qrels, metrics),
                                   stats=stats, failed=dict(output.failed))
        if output.failed and on_error == "stop":
            logger.error("%s: %d queries failed; the pipelines after it were not run", name, len(output.failed))
            break
    return ds, out, ws


def _stats(spec: PipelineSpec, ws, output, tuning, qrels: Qrels, wall: float) -> dict[str, object]:
    """A pipeline's row of stats: speed, tuned alphas, set metrics of a relevance filter, its indexes' build stats,
    and how many queries failed (``on_error=stop|skip``)."""
    secs = sum(output.timings.values())
    done = len(output.rankings)
    stats: dict[str, object] = {"queries": done, "search_seconds": secs,
                                "qps": done / secs if secs else float("inf"), "wall_seconds": wall}
    stats.update({f"seconds_{stage}": v for stage, v in output.timings.items()})
    if tuning is not None:
        stats.update(alpha=_mean_alpha(tuning.alphas), alphas=tuning.alphas, tuned_on=tuning.tuned_on)
    if any(isinstance(n, RelevanceSpec) for n in spec.walk()):
        from rankstack.eval.metrics import set_metrics

        sm = set_metrics({r.query.qid: r.docids for r in output.rankings}, qrels)
        stats.update(set_P=sm["P"], set_R=sm["R"], set_F1=sm["F1"], empty=sm["empty"], kept=sm["mean_kept"])
    for kind in dict.fromkeys(kinds.get(r.item.kind) for r in spec.retrievers()):
        keys = kind.stats_labels
        if keys:
            stats.update(getattr(ws, "stats", {}).get(keys[0], {}))
        for key in keys[1:]:  # derived indexes (MUVERA encodings, PLAID codes): their own build time
            stats.update({f"{key}_{k}": v for k, v in getattr(ws, "stats", {}).get(key, {}).items()})
    if output.failed:
        stats["failed_queries"] = len(output.failed)
    return stats


def _tune_set(ds: BeirDataset, split: str, tune_split: str | None) -> BeirDataset | None:
    folder = ds.path
    if tune_split == "auto":
        has_dev = folder is not None and (folder / "qrels" / "dev.tsv").is_file()
        tune_split = "dev" if has_dev and split != "dev" else None
    if not tune_split:
        return None
    if tune_split == split:
        raise BadInput(f"tuning on the evaluated split {split!r} would report tuned-on-test numbers; pick another "
                       f"--tune-split")
    if folder is None:
        raise BadInput("tuning needs a dataset folder with a qrels/<split>.tsv")
    return load_beir(folder, tune_split)


def _mean_alpha(alphas: list):
    """The alpha column: the one value, the mean over folds, or for nested fusions each fusion's mean ("a/b")."""
    if len(alphas) == 1 and not isinstance(alphas[0], tuple):
        return alphas[0]
    if isinstance(alphas[0], tuple):
        return "/".join(f"{sum(a[i] for a in alphas) / len(alphas):.3g}" for i in range(len(alphas[0])))
    return round(sum(alphas) / len(alphas), 4)
