from __future__ import annotations

import itertools

import numpy as np
import pytest

from rankstack.errors import BadInput
from rankstack.eval.significance import compare_per_query, paired_ttest, randomization_test


def _exact_permutation_p(d: np.ndarray) -> float:
    """Enumerate all 2^n sign flips: the exact two-sided p-value the randomization test estimates."""
    obs = abs(d.mean())
    flips = [abs((np.array(s) * d).mean()) >= obs - 1e-12 for s in itertools.product((-1, 1), repeat=d.size)]
    return float(np.mean(flips))


def test_randomization_matches_exact_enumeration():
    rng = np.random.default_rng(3)
    a = rng.random(12)
    b = a + rng.normal(0.08, 0.1, 12)
    qa = {str(i): v for i, v in enumerate(a)}
    qb = {str(i): v for i, v in enumerate(b)}
    exact = _exact_permutation_p(b - a)
    assert randomization_test(qa, qb, trials=50_000, seed=1) == pytest.approx(exact, abs=0.01)


def test_ttest_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    d = b - a
    t = d.mean() / (d.std(ddof=1) / np.sqrt(d.size))
    from scipy import stats

    expected = 2 * stats.t.sf(abs(t), d.size - 1)
    assert paired_ttest(dict(enumerate(a)), dict(enumerate(b))) == pytest.approx(expected)


def test_identical_systems_are_not_significant_and_shifted_are():
    a = {str(i): float(i % 7) / 7 for i in range(50)}
    assert compare_per_query(a, a).p_randomization == 1.0
    b = {q: v + 0.2 for q, v in a.items()}
    res = compare_per_query(a, b)
    assert res.delta == pytest.approx(0.2) and res.p_randomization < 0.001 and res.p_ttest < 0.001


def test_needs_common_queries():
    with pytest.raises(BadInput, match="at least 2 common queries"):
        paired_ttest({"a": 1.0}, {"b": 1.0})
