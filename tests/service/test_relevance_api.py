"""min_relevance in search requests: the collection's relevance adapter applied before any reranker, equal to the
library's stage on the same candidates; clear errors without an adapter, with a foreign one, or out of [0, 1]."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rankstack.errors import BadInput
from rankstack.rag.relevance import RelevanceFilter, RelevanceModel
from rankstack.records import Query, Ranking, Candidate
from rankstack.service.app import create_app
from rankstack.service.config import load_settings

from svc_helpers import DOCS, HYBRID


def adapter(tmp_path, pipeline: str):
    """A hand-set logistic map (plumbing, not a fitted model): p rises with the fused score and its gap to the top."""
    m = RelevanceModel(method="logistic", pipeline=pipeline, threshold=0.5, depth=100,
                       norm={"score": [0.02, 0.01], "stats_mean": [0, 0, 0], "stats_std": [1, 1, 1]},
                       params={"w": [1.5, 0.5, 2.0], "c": [0.0]})
    return m.save(tmp_path / f"{pipeline.replace(' ', '')}.json")


def settings(tmp_path, path):
    return load_settings(None, data_dir=str(tmp_path / "data"),
                         default_collection={**HYBRID, "relevance_adapter": str(path) if path else None})


def test_min_relevance_equals_the_library_stage(tmp_path):
    path = adapter(tmp_path, "rrf(bm25, dense)")
    with TestClient(create_app(settings(tmp_path, path))) as c:
        assert c.post("/v1/collections/x/documents", json={"documents": DOCS}).status_code == 200
        plain = c.post("/v1/collections/x/search", json={"query": "programming language", "k": 10}).json()
        got = c.post("/v1/collections/x/search",
                     json={"query": "programming language", "k": 10, "min_relevance": 0.6}).json()
        assert c.post("/v1/collections/x/search", json={"query": "x", "min_relevance": 1.5}).status_code == 422
    ranking = Ranking(query=Query(qid="q", text="programming language"),
                      candidates=tuple(Candidate(docid=h["docid"], score=h["score"]) for h in plain["results"]))
    want = RelevanceFilter(path, min_relevance=0.6).apply([ranking])[0]
    assert [h["docid"] for h in got["results"]] == want.docids
    assert [h["score"] for h in got["results"]] == pytest.approx([c.score for c in want.candidates])
    assert 0 < len(want.candidates) < len(ranking.candidates)
    assert "relevance" in got["timings"]


def test_min_relevance_errors(tmp_path):
    with TestClient(create_app(settings(tmp_path, None))) as c:
        c.post("/v1/collections/x/documents", json={"documents": DOCS})
        r = c.post("/v1/collections/x/search", json={"query": "cats", "min_relevance": 0.5})
        assert r.status_code == 422 and "no relevance adapter" in r.json()["error"]
    foreign = adapter(tmp_path, "bm25")
    with TestClient(create_app(settings(tmp_path / "2", foreign))) as c:
        c.post("/v1/collections/x/documents", json={"documents": DOCS})
        r = c.post("/v1/collections/x/search", json={"query": "cats", "min_relevance": 0.5})
        assert r.status_code == 422 and "fitted on the scores of 'bm25'" in r.json()["error"]
    with pytest.raises(BadInput, match="relevance adapter .*missing.json not found"):
        settings(tmp_path / "3", tmp_path / "missing.json")
