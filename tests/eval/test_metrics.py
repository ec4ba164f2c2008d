"""Metrics against values computed by hand with trec_eval's definitions (an independent golden example)."""

from __future__ import annotations

import math

import pytest

from rankstack.errors import BadInput
from rankstack.eval.metrics import evaluate
from rankstack.records import Qrels, Run

QRELS = Qrels(judgments={
    "q1": {"d1": 2, "d2": 0, "d3": 1, "d4": 1, "d9": 0},
    "q2": {"d7": 1},
    "q3": {"b": 1, "a": 0},
})
RUN = Run(scores={
    "q1": {"d2": 0.9, "d1": 0.8, "d5": 0.7, "d3": 0.6},   # ranks: d2, d1, d5 (unjudged), d3; d4 never retrieved
    "q3": {"a": 1.0, "b": 1.0, "c": 1.0},                  # a three-way tie
})                                                         # q2 retrieved nothing


def test_golden_per_query_values():
    res = evaluate(RUN, QRELS, ["nDCG@10", "AP", "RR@10", "R@100", "P@2"])
    pq = res.per_query
    # q1, trec_eval nDCG: gain = grade, discount log2(rank + 1); ideal = grades sorted (2, 1, 1)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert pq["nDCG@10"]["q1"] == pytest.approx(dcg / idcg, abs=1e-6)
    assert pq["AP"]["q1"] == pytest.approx((1 / 2 + 2 / 4) / 3, abs=1e-6)   # relevant at ranks 2 and 4 of 3
    assert pq["RR@10"]["q1"] == pytest.approx(1 / 2)
    assert pq["R@100"]["q1"] == pytest.approx(2 / 3)
    assert pq["P@2"]["q1"] == pytest.approx(1 / 2)
    # q2 has judgments but no results: it counts as 0 (trec_eval -c), it is not dropped
    assert all(pq[m]["q2"] == 0.0 for m in pq)
    # q3: trec_eval breaks score ties by docid *descending*: c, b, a -> the relevant b is at rank 2
    assert pq["RR@10"]["q3"] == pytest.approx(1 / 2)


def test_aggregate_is_mean_over_all_judged_queries():
    res = evaluate(RUN, QRELS, ["RR@10"])
    assert res.num_queries == 3
    assert res.aggregate["RR@10"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)


def test_unjudged_queries_in_the_run_are_ignored():
    run = Run(scores={**RUN.to_dict(), "zzz": {"d1": 1.0}})
    assert evaluate(run, QRELS, ["AP"]).aggregate == evaluate(RUN, QRELS, ["AP"]).aggregate


def test_beir_rule_drops_the_query_itself():
    qrels = Qrels(judgments={"7": {"x": 1}})
    run = Run(scores={"7": {"7": 9.0, "x": 1.0}})
    assert evaluate(run, qrels, ["RR@10"]).aggregate["RR@10"] == 1.0
    assert evaluate(run, qrels, ["RR@10"], drop_self=False).aggregate["RR@10"] == 0.5


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(BadInput, match="unknown metric"):
        evaluate(RUN, QRELS, ["nDCG@@10"])
