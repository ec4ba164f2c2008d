"""Named rerankers in the service: config validation, /v1/rerank by name, and pipeline reranking, each checked
against the same reranker run directly on the same candidates (tiny config-built LLM: plumbing, not quality)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rankstack.errors import BadInput
from rankstack.records import Candidate, Document, Query, Ranking
from rankstack.rerank.llm import CausalLM, FirstReranker, ICRReranker
from rankstack.service.app import create_app
from tests.tiny_llm import save_tiny_llm

from svc_helpers import DOCS, HYBRID, make_settings

TEXTS = ["Rust is a systems language", "Cats purr when content", "Tea is a drink", "Fleas live on cats and dogs"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_llm(tmp_path_factory.mktemp("tiny-llm")))


@pytest.fixture(scope="module")
def direct(tiny_dir):
    return CausalLM(tiny_dir)


def settings(tmp_path, tiny_dir, **kw):
    rerankers = {"first": {"kind": "first", "model": tiny_dir, "depth": 10, "passage_tokens": 16},
                 "icr": f"icr:model={tiny_dir},depth=10,passage_tokens=16"}
    return make_settings(tmp_path, rerankers=rerankers, **kw)


def order(reranker, query: str, docs: list[Document]) -> list[str]:
    r = Ranking(query=Query(qid="q", text=query),
                candidates=tuple(Candidate(docid=d.docid, score=0.0, document=d) for d in docs))
    return [c.docid for c in reranker.rerank(r).candidates]


def test_rerank_endpoint_by_name_equals_the_reranker_run_directly(tmp_path, tiny_dir, direct):
    docs = [Document(docid=str(i), text=t) for i, t in enumerate(TEXTS)]
    with TestClient(create_app(settings(tmp_path, tiny_dir))) as c:
        for name, ref in (("first", FirstReranker(direct, passage_tokens=16)),
                          ("icr", ICRReranker(direct, passage_tokens=16))):
            r = c.post("/v1/rerank", json={"query": "flea life cycle", "documents": TEXTS, "model": name})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == name
            assert [str(x["index"]) for x in r.json()["results"]] == order(ref, "flea life cycle", docs)
        r = c.post("/v1/rerank", json={"query": "x", "documents": TEXTS, "model": "monot5"})
        assert r.status_code == 422
        assert "unknown reranker 'monot5'" in r.json()["error"] and "'first'" in r.json()["error"]


def test_pipeline_reranker_from_config_and_from_a_request_override(tmp_path, tiny_dir, direct):
    cfg = {**HYBRID, "pipeline": {**HYBRID["pipeline"], "reranker": "first"}}
    with TestClient(create_app(settings(tmp_path, tiny_dir, default_collection=cfg))) as c:
        assert c.post("/v1/collections/demo/documents", json={"documents": DOCS}).status_code == 200
        q = {"query": "memory safe programming language", "k": 4}
        plain = c.post("/v1/collections/demo/search", json={**q, "pipeline": {"reranker": "none"}}).json()
        assert "rerank" not in plain["timings"]
        reranked = c.post("/v1/collections/demo/search", json=q).json()
        assert "rerank" in reranked["timings"]
        by_id = {d["docid"]: Document(docid=d["docid"], text=d["text"], title=d["title"], metadata=d["metadata"])
                 for d in DOCS}
        want = order(FirstReranker(direct, passage_tokens=16), q["query"],
                     [by_id[h["docid"]] for h in plain["results"]])
        assert [h["docid"] for h in reranked["results"]] == want
        assert want != [h["docid"] for h in plain["results"]], "pick a query the reranker reorders"
        icr = c.post("/v1/collections/demo/search", json={**q, "pipeline": {"reranker": "icr"}}).json()
        assert [h["docid"] for h in icr["results"]] == order(
            ICRReranker(direct, passage_tokens=16), q["query"], [by_id[h["docid"]] for h in plain["results"]])
        # a filter that leaves nothing: no candidates, nothing to rerank, no error
        r = c.post("/v1/collections/demo/search", json={**q, "filters": {"kind": "none-such"}})
        assert r.status_code == 200 and r.json()["results"] == []
        r = c.post("/v1/collections/demo/search", json={**q, "pipeline": {"reranker": "monot5"}})
        assert r.status_code == 422 and "unknown reranker 'monot5'" in r.json()["error"]


def test_config_errors_name_the_defined_rerankers(tmp_path, tiny_dir):
    cfg = {**HYBRID, "pipeline": {**HYBRID["pipeline"], "reranker": "frist"}}
    with pytest.raises(BadInput, match=r"default_collection uses reranker 'frist'; defined rerankers: "
                                       r"\['embedding', 'first', 'icr'\]"):
        settings(tmp_path, tiny_dir, default_collection=cfg)
    with pytest.raises(BadInput, match="reranker 'icr' has no option 'windw'"):
        make_settings(tmp_path, rerankers={"x": {"kind": "icr", "windw": 2}})
    with pytest.raises(BadInput, match="default_reranker uses reranker 'nope'"):
        make_settings(tmp_path, default_reranker="nope")


def test_the_readme_config_example_loads():
    import re
    from pathlib import Path

    from rankstack.service.config import Settings
    import tomllib

    block = re.search(r"```toml\n(.*?)```", (Path(__file__).parents[2] / "README.md").read_text(), re.S).group(1)
    s = Settings.model_validate(tomllib.loads(block))
    specs = s.reranker_specs()
    assert s.collections["scifact"].pipeline.reranker == "first" and specs["first"].model_name == "smollm2"
    assert dict(specs["icr"].options)["heads"] == ((18, 7), (18, 8))
