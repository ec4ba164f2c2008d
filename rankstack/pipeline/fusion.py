"""Fusion of runs as pure functions: reciprocal rank fusion and normalised score interpolation.

Pipelines fuse through :class:`rankstack.pipeline.Fuse` (``rrf(bm25, dense)`` in a spec, ``bm25 + dense`` in
Python), which calls these. ``rrf_k`` is RRF's rank constant; it has nothing to do with how many results are kept.
"""

from __future__ import annotations

from typing import Sequence

from rankstack.errors import BadInput
from rankstack.records import Run

__all__ = ["rrf", "interpolate"]


def _ranked(run: Run, qid: str, depth: int | None) -> list[tuple[str, float]]:
    return run.ranked(qid)[:depth]


def rrf(runs: Sequence[Run], *, rrf_k: int = 60, depth: int | None = None, name: str = "rrf") -> Run:
    """Reciprocal rank fusion (Cormack et al., 2009): ``score(d) = sum_r 1 / (rrf_k + rank_r(d))``, ranks from 1,
    over the top ``depth`` of each run (None: all of it)."""
    if not runs:
        raise BadInput("rrf needs at least one run")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise BadInput(f"the RRF constant rrf_k must be an integer >= 0, got {rrf_k!r}")
    qids = list(dict.fromkeys(q for r in runs for q in r.qids))
    fused: dict[str, dict[str, float]] = {}
    for q in qids:
        acc: dict[str, float] = {}
        for r in runs:
            for rank, (d, _) in enumerate(_ranked(r, q, depth), 1):
                acc[d] = acc.get(d, 0.0) + 1.0 / (rrf_k + rank)
        fused[q] = acc
    return Run(scores=fused, name=name)


def _minmax(pairs: list[tuple[str, float]]) -> dict[str, float]:
    if not pairs:
        return {}
    vals = [s for _, s in pairs]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return {d: 1.0 for d, _ in pairs}
    return {d: (s - lo) / (hi - lo) for d, s in pairs}


def interpolate(a: Run, b: Run, *, alpha: float = 0.5, depth: int | None = None, name: str = "interp") -> Run:
    """``alpha * norm(a) + (1 - alpha) * norm(b)`` with per-query min-max normalisation over the top ``depth`` of
    each run (None: all of it). A document missing from one run gets that run's minimum normalised score (0)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise BadInput(f"alpha must lie in [0, 1], got {alpha!r}")
    fused: dict[str, dict[str, float]] = {}
    for q in dict.fromkeys([*a.qids, *b.qids]):
        na, nb = _minmax(_ranked(a, q, depth)), _minmax(_ranked(b, q, depth))
        fused[q] = {d: alpha * na.get(d, 0.0) + (1 - alpha) * nb.get(d, 0.0) for d in {*na, *nb}}
    return Run(scores=fused, name=name)
