"""Late interaction on real SciFact text with the offline token encoder (MiniLM token vectors), through every door:
pipeline specs over a dataset workspace, the CLI's index folders, and a service collection. Scores are checked
against MaxSim computed here by brute force from the encoder's own token vectors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("faiss", reason="needs rankstack[cpu]")

from tests.conftest import beir_subset  # noqa: E402
from rankstack.errors import BadInput  # noqa: E402
from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.pipeline import DatasetWorkspace, compile_pipeline  # noqa: E402
from rankstack.records import Query  # noqa: E402
from rankstack.retrieval.kinds.multivector import MultiVectorSettings  # noqa: E402

N_DOCS, N_QUERIES = 120, 6


@pytest.fixture(autouse=True, scope="module")
def _reference_maxsim():
    """MaxSim on CPU tensors through the torch reference, as it runs outside the tests: the Triton interpreter (on in
    conftest) took ~75% of these tests' time, and tests/kernels/test_maxsim_kernel.py checks the kernel against it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        yield


@pytest.fixture(scope="module")
def subset(scifact_dir, tmp_path_factory):
    return beir_subset(scifact_dir, tmp_path_factory.mktemp("mv") / "scifact-mv", N_QUERIES, N_DOCS)


@pytest.fixture(scope="module")
def ws(subset, tmp_path_factory):
    return DatasetWorkspace(load_beir(subset), tmp_path_factory.mktemp("mv-idx"))


def _brute(encoder, queries, docs):
    qt = encoder.encode_queries([q.text for q in queries])
    dt = [encoder.encode_documents([d]).vectors for d in docs]  # one document at a time: no batch effects
    return np.array([[float((q @ t.T).max(1).sum()) for t in dt] for q in qt])


def test_exact_maxsim_equals_brute_force_and_muvera_with_every_candidate_equals_it(ws):
    ds = ws.dataset
    queries, docs = list(ds.queries.values()), list(ds.corpus.values())
    encoder = MultiVectorSettings.of("maxsim").encoder(ws.models)
    brute = _brute(encoder, queries, docs)
    got = compile_pipeline("maxsim", ws).run(queries, 10).rankings
    for i, r in enumerate(got):
        order = np.argsort(-brute[i], kind="stable")[:10]
        # float16 storage moves scores by ~1e-3: compare scores, and ranks where the gap is clear
        want = {docs[j].docid: brute[i, j] for j in range(len(docs))}
        assert [c.score for c in r.candidates] == pytest.approx([want[d] for d in r.docids], abs=2e-2)
        assert r.docids[0] == docs[order[0]].docid
        assert len(set(r.docids) & {docs[j].docid for j in order}) >= 9
    # MUVERA rescoring every document is exact MaxSim; with few candidates it still finds most of the top 10
    full = compile_pipeline(f"muvera:candidates={N_DOCS}", ws).run(queries, 10).rankings
    assert [r.docids for r in full] == [r.docids for r in got]
    few = compile_pipeline("muvera:k_sim=4,d_proj=16,reps=20,candidates=40,index=(hnsw)", ws).run(queries, 10).rankings
    assert np.mean([len(set(a.docids) & set(b.docids)) / 10 for a, b in zip(few, got)]) >= 0.7
    # PLAID at 4 bits with every centroid probed and every document scored: nearly exact
    plaid = compile_pipeline(f"plaid:nbits=4,ncentroids=64,nprobe=64,candidates={N_DOCS}", ws).run(queries, 10)
    assert np.mean([len(set(a.docids) & set(b.docids)) / 10 for a, b in zip(plaid.rankings, got)]) >= 0.8


def test_maxsim_reranker_stored_equals_encoded_and_prf_reweights(ws):
    ds = ws.dataset
    queries = list(ds.queries.values())
    stored = compile_pipeline("bm25 % 30 >> maxsim:depth=30", ws).run(queries, 30).rankings
    encoded = compile_pipeline("bm25 % 30 >> maxsim:depth=30,stored=false", ws).run(queries, 30).rankings
    exact = {r.query.qid: {c.docid: c.score for c in r.candidates}
             for r in compile_pipeline("maxsim", ws).run(queries, N_DOCS).rankings}
    for a, b in zip(stored, encoded):
        sa, sb = {c.docid: c.score for c in a.candidates}, {c.docid: c.score for c in b.candidates}
        assert sa.keys() == sb.keys()
        assert [sa[d] for d in sa] == pytest.approx([sb[d] for d in sa], abs=2e-2)
        assert [sa[d] for d in sa] == pytest.approx([exact[a.query.qid][d] for d in sa], abs=1e-4)
    reranker, _ = ws.reranker("colbert-prf:fb_docs=3,fb_embs=5")
    assert reranker.index is not None
    base = compile_pipeline("maxsim % 50", ws).run(queries, 50).rankings
    prf = compile_pipeline("maxsim % 50 >> colbert-prf:depth=50,fb_docs=3,fb_embs=5", ws).run(queries, 50).rankings
    for b, p in zip(base, prf):
        assert set(b.docids) == set(p.docids)
        # expanded queries add beta * idf-weighted MaxSim terms: every score rises
        sb = {c.docid: c.score for c in b.candidates}
        assert all(c.score > sb[c.docid] for c in p.candidates)
    assert any(b.docids != p.docids for b, p in zip(base, prf))


def test_truncation_is_counted(ws):
    from rankstack.retrieval.token_encoders import TokenEncoder, cached_token_encoder

    docs = list(ws.dataset.corpus.values())[:20]
    enc = cached_token_encoder(ws.models, MultiVectorSettings.of("maxsim").model, document_length=32)
    out = enc.encode_documents(docs)
    lengths = [len(enc.model.tokenizer(d.contents)["input_ids"]) for d in docs]
    assert out.truncated == sum(n > 32 for n in lengths) > 0
    assert (out.lengths <= 32).all()
    with pytest.raises(BadInput, match="exceeds"):
        TokenEncoder(loaded=enc.model, document_length=4096)
    with pytest.raises(BadInput, match="empty query"):
        enc.encode_queries(["  "])


def test_cli_index_and_search(subset, tmp_path):
    idx = tmp_path / "mv"
    cmd = [sys.executable, "-m", "rankstack"]
    r = subprocess.run(cmd + ["index", "--dataset", str(subset), "--kind", "maxsim", "--output", str(idx)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meta = json.loads((idx / "params.json").read_text())
    assert meta["kind"] == "multi-vector" and meta["n_docs"] == N_DOCS
    ds = load_beir(subset)
    q = next(iter(ds.queries.values()))
    outs = {}
    for spec in ("maxsim", f"muvera:candidates={N_DOCS}"):
        r = subprocess.run(cmd + ["search", "--index", str(idx), "--pipeline", spec, "--query", q.text, "-k", "5",
                                  "--format", "json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs[spec] = [h["docid"] for h in json.loads(r.stdout)[0]["results"]]
    assert outs["maxsim"] == outs[f"muvera:candidates={N_DOCS}"] and len(outs["maxsim"]) == 5
    r = subprocess.run(cmd + ["search", "--index", str(idx), "--pipeline", "bm25", "--query", "x"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "holds a bm25 index" in r.stderr


def test_service_collection_keeps_a_token_index(subset, tmp_path):
    pytest.importorskip("fastapi", reason="needs rankstack[service]")
    from fastapi.testclient import TestClient

    from rankstack.service.app import create_app
    from rankstack.service.config import load_settings

    ds = load_beir(subset)
    docs = list(ds.corpus.values())[:40]
    settings = load_settings(None, data_dir=str(tmp_path / "data"), default_collection={
        "name": "x", "indexes": ["bm25", "maxsim"], "pipeline": {"spec": "maxsim"}})
    q = next(iter(ds.queries.values())).text
    with TestClient(create_app(settings)) as c:
        body = [{"docid": d.docid, "title": d.title, "text": d.text} for d in docs]
        assert c.post("/v1/collections/x/documents", json={"documents": body}).status_code == 200
        got = c.post("/v1/collections/x/search", json={"query": q, "k": 5}).json()["results"]
        ids = [h["docid"] for h in got]
        rr = c.post("/v1/collections/x/search", json={"query": q, "k": 5, "pipeline": "bm25 % 20 >> maxsim"}).json()
        mu = c.post("/v1/collections/x/search", json={"query": q, "k": 5, "pipeline": "muvera:candidates=40"}).json()
        assert [h["docid"] for h in mu["results"]] == ids
        assert c.delete(f"/v1/collections/x/documents/{ids[0]}").status_code == 200
        after = [h["docid"] for h in c.post("/v1/collections/x/search", json={"query": q, "k": 5}).json()["results"]]
    assert ids[0] not in after and after[:4] == ids[1:5]
    # the library on the same 40 documents gives the same ranking and scores
    from rankstack.models import ModelCache
    from rankstack.retrieval.multivector import MaxSimRetriever, build_token_index

    enc = MultiVectorSettings.of("maxsim").encoder(ModelCache())
    lib = MaxSimRetriever(enc, build_token_index(enc, docs)).search(Query(qid="q", text=q), 5)
    assert lib.docids == ids
    assert [h["score"] for h in got] == pytest.approx([c.score for c in lib.candidates], abs=1e-3)
    scored = {h["docid"]: h["score"] for h in rr["results"]}
    assert all(abs(scored[d] - s) < 1e-3 for d, s in ((c.docid, c.score) for c in lib.candidates) if d in scored)


def test_bad_input(ws, tmp_path):
    from rankstack.pipeline.spec import parse_pipeline
    from rankstack.retrieval.multivector import build_token_index

    with pytest.raises(BadInput, match="nbits"):
        parse_pipeline("plaid:nbits=3")
    with pytest.raises(BadInput, match="candidates"):
        parse_pipeline("muvera:candidates=-1")
    with pytest.raises(BadInput, match="empty corpus"):
        build_token_index(MultiVectorSettings.of("maxsim").encoder(ws.models), [])
    with pytest.raises(BadInput, match="has no option .k_sim."):
        parse_pipeline("maxsim:k_sim=3")
    with pytest.raises(BadInput, match="empty"):
        compile_pipeline("maxsim", ws).run([Query(qid="q", text=" ")], 5)


def test_multi_vector_kinds_shard_and_equal_one_index(ws, tmp_path):
    """3 shards of the token vectors (built in this process): exact MaxSim and MUVERA (each shard derives its part of
    the encodings; the candidates are the collection's best, rescored where they live) equal one index; PLAID trains
    its centroids per shard, so it is checked against exact MaxSim, as one PLAID index is."""
    from rankstack.distributed.build import build_sharded
    from rankstack.distributed.sharded import ShardedResources

    ds = ws.dataset
    queries = list(ds.queries.values())
    sharded = build_sharded(list(ds.corpus.values()), tmp_path / "sh", shards=3, indexes=("maxsim",), address=None)
    res = ShardedResources(sharded, models=ws.models)
    for spec in ("maxsim", "muvera:candidates=30", "muvera:k_sim=4,candidates=0"):
        got = compile_pipeline(spec, res).run(queries, 10).rankings
        want = compile_pipeline(spec, ws).run(queries, 10).rankings
        assert [r.docids for r in got] == [r.docids for r in want], spec
        # scores up to float32 rounding; the encodings' own scores (candidates=0) also up to a token whose SimHash
        # projection is within rounding of zero landing in the other partition when computed in another batch
        assert np.allclose([c.score for r in got for c in r.candidates],
                           [c.score for r in want for c in r.candidates], rtol=1e-5 if "=0" not in spec else 2e-3), spec
    exact = compile_pipeline("maxsim", ws).run(queries, 10).rankings
    plaid = compile_pipeline("plaid:nbits=4,nprobe=32,candidates=120", res).run(queries, 10).rankings
    assert np.mean([len(set(a.docids) & set(b.docids)) / 10 for a, b in zip(plaid, exact)]) >= 0.9
