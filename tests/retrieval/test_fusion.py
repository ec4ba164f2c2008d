from __future__ import annotations

import pytest

from rankstack.errors import BadInput
from rankstack.pipeline import Cutoff, Pipeline
from rankstack.records import Candidate, Query, Ranking, Run
from rankstack.retrieval.base import Retriever
from rankstack.retrieval.fusion import HybridRetriever, interpolate, rrf


def test_rrf_by_hand():
    a = Run(scores={"q": {"x": 3.0, "y": 2.0, "z": 1.0}})
    b = Run(scores={"q": {"z": 0.9, "x": 0.5}})
    fused = rrf([a, b], k=60).scores["q"]
    assert fused["x"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["y"] == pytest.approx(1 / 62)
    assert fused["z"] == pytest.approx(1 / 63 + 1 / 61)
    assert [d for d, _ in rrf([a, b]).ranked("q")] == ["x", "z", "y"]


def test_interpolation_by_hand():
    a = Run(scores={"q": {"x": 10.0, "y": 5.0, "z": 0.0}})
    b = Run(scores={"q": {"y": 2.0, "w": 1.0}})
    f = interpolate(a, b, alpha=0.25).scores["q"]
    assert f["x"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert f["y"] == pytest.approx(0.25 * 0.5 + 0.75 * 1.0)
    assert f["w"] == pytest.approx(0.0)
    assert f["z"] == pytest.approx(0.0)
    assert interpolate(a, b, alpha=1.0).ranked("q")[0][0] == "x"
    with pytest.raises(BadInput, match="alpha"):
        interpolate(a, b, alpha=1.5)


def test_fusion_does_not_mutate_inputs():
    a = Run(scores={"q": {"x": 1.0}})
    before = a.to_dict()
    rrf([a, a])
    interpolate(a, a)
    assert a.to_dict() == before


class FixedRetriever(Retriever):
    """A real Retriever over a fixed score table (the independent baseline for composition tests)."""

    def __init__(self, table, name):
        self.table, self.name = table, name

    def retrieve(self, queries, k=1000):
        return [Ranking.from_scores(q, self.table.get(q.qid, {})).top(k) for q in queries]


def test_hybrid_retriever_equals_fusing_the_runs():
    a = FixedRetriever({"q": {"x": 3.0, "y": 2.0, "z": 1.0}}, "a")
    b = FixedRetriever({"q": {"z": 0.9, "x": 0.5}}, "b")
    q = [Query(qid="q", text="t")]
    hyb = HybridRetriever([a, b], method="rrf").retrieve(q, 2)[0]
    expected = rrf([Run.from_rankings(a.retrieve(q)), Run.from_rankings(b.retrieve(q))]).ranked("q")[:2]
    assert [(c.docid, c.score) for c in hyb.candidates] == expected
    with pytest.raises(BadInput, match="unknown fusion method"):
        HybridRetriever([a, b], method="max")


def test_pipeline_composition_and_cutoff():
    a = FixedRetriever({"q": {str(i): float(i) for i in range(50)}}, "a")

    def reverse(rankings):
        return [Ranking(query=r.query, candidates=tuple(Candidate(docid=c.docid, score=-c.score)
                                                         for c in reversed(r.candidates))) for r in rankings]

    pipe = a >> reverse
    assert isinstance(pipe, Pipeline)
    pipe = (pipe % 5)
    out = pipe.retrieve([Query(qid="q", text="t")], 100)[0]
    assert out.docids == ["0", "1", "2", "3", "4"]  # a's top-50 reversed, then cut to 5
    assert "a" in pipe.name and "%5" in pipe.name
    with pytest.raises(BadInput):
        Cutoff(0)
