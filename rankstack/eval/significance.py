"""Paired significance tests between two systems' per-query scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from rankstack.errors import BadInput

__all__ = ["PairedTest", "paired_ttest", "randomization_test", "compare_per_query"]


@dataclass(frozen=True, kw_only=True)
class PairedTest:
    mean_a: float
    mean_b: float
    delta: float          # mean_b - mean_a
    p_ttest: float
    p_randomization: float
    num_queries: int


def _paired(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    qids = sorted(set(a) & set(b))
    if len(qids) < 2:
        raise BadInput(f"a paired test needs at least 2 common queries, got {len(qids)}")
    return np.array([a[q] for q in qids], dtype=np.float64), np.array([b[q] for q in qids], dtype=np.float64)


def paired_ttest(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Two-sided paired t-test p-value over the common queries."""
    from scipy import stats

    x, y = _paired(a, b)
    d = y - x
    if np.allclose(d, d[0], rtol=0, atol=1e-12):  # zero variance: the t statistic is 0/0 or infinite
        return 1.0 if abs(d[0]) <= 1e-12 else 0.0
    return float(stats.ttest_rel(x, y).pvalue)


def randomization_test(a: Mapping[str, float], b: Mapping[str, float], *, trials: int = 10_000,
                       seed: int = 0) -> float:
    """Two-sided paired randomization (permutation) test on the mean difference (Smucker et al., 2007).

    Each trial flips the sign of every query's difference with probability 1/2; the p-value counts trials
    whose |mean| reaches the observed one, with the +1 correction so it is never 0.
    """
    x, y = _paired(a, b)
    d = y - x
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    batch = 1000
    for start in range(0, trials, batch):
        n = min(batch, trials - start)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return (hits + 1) / (trials + 1)


def compare_per_query(a: Mapping[str, float], b: Mapping[str, float], *, trials: int = 10_000,
                      seed: int = 0) -> PairedTest:
    x, y = _paired(a, b)
    return PairedTest(mean_a=float(x.mean()), mean_b=float(y.mean()), delta=float(y.mean() - x.mean()),
                      p_ttest=paired_ttest(a, b), p_randomization=randomization_test(a, b, trials=trials, seed=seed),
                      num_queries=int(x.size))
