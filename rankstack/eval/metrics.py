"""Metrics through ir_measures (trec_eval semantics), per query and aggregate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from rankstack.errors import BadInput
from rankstack.records import Qrels, Run

__all__ = ["DEFAULT_METRICS", "EvalResult", "evaluate", "drop_self_hits", "set_metrics"]

DEFAULT_METRICS: tuple[str, ...] = ("nDCG@10", "R@100", "R@1000", "AP", "RR@10")


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """``aggregate[metric]`` is the mean over every judged query (a query missing from the run scores 0, as
    ``trec_eval -c`` does); ``per_query[metric][qid]`` holds the per-query values."""

    aggregate: Mapping[str, float]
    per_query: Mapping[str, Mapping[str, float]] = field(repr=False)
    num_queries: int


def drop_self_hits(run: Run) -> Run:
    """BEIR's rule: a document that has the query's own id is not a retrieval result for that query."""
    return Run(scores={q: {d: s for d, s in docs.items() if d != q} for q, docs in run.scores.items()}, name=run.name)


def evaluate(run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS, *,
             drop_self: bool = True) -> EvalResult:
    """Evaluate ``run`` against ``qrels``.

    ``metrics`` are ir_measures names (``nDCG@10``, ``R@100``, ``AP``, ``RR@10``, ``P@5``...).
    ``drop_self`` applies BEIR's rule of ignoring a retrieved document whose id equals the query id.
    """
    import ir_measures

    if not metrics:
        raise BadInput("no metrics requested")
    try:
        measures = {m: ir_measures.parse_measure(m) for m in metrics}
    except Exception as exc:  # ir_measures raises a bare error for unknown names
        raise BadInput(f"unknown metric in {list(metrics)}: {exc}. Use ir_measures names such as "
                       f"{', '.join(DEFAULT_METRICS)}") from None
    if drop_self:
        run = drop_self_hits(run)
    qrels_d = qrels.to_dict()
    run_d = {q: dict(d) for q, d in run.scores.items() if q in qrels_d and d}
    by_measure = {m: name for name, m in measures.items()}
    per_query: dict[str, dict[str, float]] = {name: {q: 0.0 for q in qrels_d} for name in measures}
    if run_d:
        for row in ir_measures.iter_calc(list(measures.values()), qrels_d, run_d):
            per_query[by_measure[row.measure]][row.query_id] = float(row.value)
    n = len(qrels_d)
    aggregate = {name: (sum(v.values()) / n if n else 0.0) for name, v in per_query.items()}
    return EvalResult(aggregate=aggregate, per_query=per_query, num_queries=n)


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
