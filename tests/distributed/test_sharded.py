"""Sharded collections on a local Ray cluster this test starts (a head and two worker nodes on this machine).

SciFact (all 5,183 documents) is built into 4 shards by Ray Data; its BM25 runs must equal Pyserini's on every test
query (collection-wide statistics), its dense runs the exact single-index runs. Hybrid and MiniLM run on a subset
(encoding the whole corpus takes minutes here). Killing processes during a batch must never lose queries silently.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs rankstack[ray]")
pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("faiss", reason="needs rankstack[cpu]")

from rankstack.errors import BadInput, IndexCorrupt  # noqa: E402
from rankstack.eval.datasets import load_beir  # noqa: E402
from tests.conftest import beir_subset, same_lucene_run  # noqa: E402


def same_run(got, want, tol: float = 0.0) -> bool:
    """Equal scores rank by rank (within ``tol``), and equal docids wherever a score is not tied with another
    (documents tied at equal scores, and at the cut, may come in either order)."""
    g, w = [(c.docid, c.score) for c in got.candidates], [(c.docid, c.score) for c in want.candidates]
    if len(g) != len(w) or any(abs(a[1] - b[1]) > tol for a, b in zip(g, w)):
        return False
    cut = w[-1][1] if w else 0.0
    gap = max(tol, 1e-4) * 2
    return ({d for d, s in g if s > cut + gap} == {d for d, s in w if s > cut + gap}
            and all(a[0] == b[0] for i, (a, b) in enumerate(zip(g, w))
                    if b[1] > cut + gap and (i == 0 or w[i - 1][1] - b[1] > gap) and b[1] - w[i + 1][1] > gap))


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    from rankstack.distributed.cluster import init

    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        nodes = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
        init(address=c.address, logging_level="WARNING")  # keeps the JVM's signal handlers (see init)
    except Exception as exc:  # noqa: BLE001 - any failure to start Ray here is a reason to skip, said aloud
        pytest.skip(f"a local Ray cluster could not start on this machine: {exc}")
    c.worker_nodes_ = nodes
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def scifact(scifact_dir):
    return load_beir(scifact_dir)


@pytest.fixture(scope="module")
def sharded(cluster, scifact, tmp_path_factory):
    from rankstack.distributed.build import build_sharded

    out = tmp_path_factory.mktemp("sharded") / "scifact"
    index = build_sharded(list(scifact.corpus.values()), out, shards=4, indexes=("bm25", "dense"),
                          model="hash:256", address=cluster.address, workers=2)
    return index


@pytest.fixture(scope="module")
def workspace(scifact, tmp_path_factory):
    from rankstack.pipeline import DatasetWorkspace

    return DatasetWorkspace(scifact, tmp_path_factory.mktemp("ws"), model="hash:256")


def test_build_writes_four_shards_on_both_workers(sharded, scifact):
    assert [s["num_docs"] for s in sharded.shards] == [1295, 1296, 1296, 1296]
    assert sharded.docids == list(scifact.corpus)  # collection order is the corpus order
    assert len(sharded.params["build"]["worker_pids"]) >= 1
    assert [e.spec for e in sharded.entries] == ["bm25", "dense"]


def test_bm25_over_shards_equals_pyserini_on_every_query(sharded, scifact, workspace):
    from rankstack.distributed.sharded import ShardedResources

    queries = list(scifact.queries.values())
    got = ShardedResources(sharded).retriever("bm25").retrieve(queries, 1000)
    want = workspace.retriever("bm25").retrieve(queries, 1000)  # Lucene over the whole corpus, through Pyserini
    bad = [q.qid for q, a, b in zip(queries, got, want)
           if not same_lucene_run([(c.docid, c.score) for c in a.candidates], [(c.docid, c.score) for c in b.candidates])]
    assert not bad, f"{len(bad)} of {len(queries)} queries differ from Pyserini, e.g. {bad[:5]}"
    # one shard on its own statistics would not: the collection-wide ones are what make it equal
    from rankstack.index.bm25_matrix import BM25Matrix

    alone = BM25Matrix.load(sharded.path / "shard-000" / "bm25")
    docid, own = alone.search([queries[0].text], 1)[0][0]
    assert abs(own - {c.docid: c.score for c in got[0].candidates}[docid]) > 1e-3


def test_dense_over_shards_on_ray_equals_exact_search(cluster, sharded, scifact, workspace):
    from rankstack.distributed.sharded import ShardedResources

    queries = list(scifact.queries.values())
    want = workspace.retriever("dense:model=hash:256").retrieve(queries, 100)
    res = ShardedResources(sharded, address=cluster.address, replicas=2)
    try:
        got = res.retriever("dense").retrieve(queries, 100)
        health = res.health()
    finally:
        res.close()
    bad = [q.qid for q, a, b in zip(queries, got, want) if not same_run(a, b, tol=1e-6)]
    assert not bad, f"{len(bad)} queries differ from exact search, e.g. {bad[:5]}"
    assert len(health) == 4 and all(h["ok"] and len(h["replicas"]) == 2 for h in health)


def test_hybrid_over_all_of_scifact_equals_single_node(sharded, scifact, workspace):
    """hybrid-rrf (BM25 + dense, fused once after the merge) over the 4 shards = over the single indexes, wherever
    the fused lists are the same; they differ only where documents tie at a list's cut (either may be kept), and
    then RRF, which reads ranks, differs below them."""
    from rankstack.pipeline import compile_pipeline
    from rankstack.distributed.sharded import ShardedResources

    queries = list(scifact.queries.values())
    res = ShardedResources(sharded)
    got = compile_pipeline("hybrid-rrf", res).run(queries, 100)
    want = compile_pipeline("hybrid-rrf", workspace).run(queries, 100)
    depth = {v for s in want.stats.values() for k, v in s.items() if k.startswith("retrieve")}
    assert max(depth) == 1000  # what each list was cut to before fusion (fewer where BM25 matches fewer)
    ties = set()
    for kind in ("bm25", "dense"):
        single = workspace.retriever("dense:model=hash:256" if kind == "dense" else kind).retrieve(queries, 1000)
        for a, b in zip(res.retriever(kind).retrieve(queries, 1000), single):
            assert same_run(a, b, tol=1e-6), (kind, a.query.qid)
            if [c.docid for c in a.candidates] != [c.docid for c in b.candidates]:
                ties.add(a.query.qid)
    bad = [q.qid for q, a, b in zip(queries, got.rankings, want.rankings)
           if q.qid not in ties and [(c.docid, round(c.score, 9)) for c in a.candidates]
           != [(c.docid, round(c.score, 9)) for c in b.candidates]]
    assert not bad, f"{len(bad)} of {len(queries)} hybrid runs differ over equal inputs, e.g. {bad[:5]}"
    assert len(ties) < len(queries) // 2, f"only {len(queries) - len(ties)} queries compared"  # 163 here


def test_hybrid_minilm_and_splade_subset_equals_single_node(cluster, scifact_dir, tmp_path):
    """The whole pipeline (BM25 + MiniLM fused by RRF) over 4 shards built on Ray = over one index; learned-sparse
    shards (SPLADE-tiny impacts) too, with model queries and with IDF queries (collection-wide frequencies)."""
    from rankstack.distributed.build import build_sharded
    from rankstack.pipeline import DatasetWorkspace, compile_pipeline
    from rankstack.distributed.sharded import ShardedResources

    ds = load_beir(beir_subset(scifact_dir, tmp_path / "sub", 10, 120))
    queries = list(ds.queries.values())
    index = build_sharded(list(ds.corpus.values()), tmp_path / "sharded", shards=4, address=cluster.address,
                          indexes=("bm25", "dense", "splade"), workers=2, batch_size=16)
    ws = DatasetWorkspace(ds, tmp_path / "ws")
    res = ShardedResources(index, models=ws.models)  # one set of shard searchers and loaded models for every spec
    for spec in ("hybrid-rrf", "splade", "splade:query=idf", "rrf(bm25, dense, splade)"):
        got = compile_pipeline(spec, res).run(queries, 50).rankings
        want = compile_pipeline(spec, ws).run(queries, 50).rankings
        bad = [q.qid for q, a, b in zip(queries, got, want) if not same_run(a, b, tol=1e-6)]
        assert not bad, f"{spec} runs differ on {bad}"
        assert sum(len(r.candidates) for r in got) > 10 * len(queries)
    d_got = res.retriever("dense").retrieve(queries, 120)
    d_want = ws.retriever("dense").retrieve(queries, 120)
    assert all(same_run(a, b, tol=1e-5) for a, b in zip(d_got, d_want))
    # IDF queries weigh tokens by the collection's frequencies; one shard's own would give other impacts
    from rankstack.index.sparse import SparseIndex

    sq = res.retriever("splade:query=idf").encode([queries[0].text])
    own = SparseIndex.load(index.path / "shard-000" / index.entries[2].folder).idf_queries(
        ws.retriever("splade").encoder.query_tokens([queries[0].text]))
    assert sq.nnz and (sq != own).nnz
    with pytest.raises(BadInput, match="engine=scipy"):
        res.retriever("splade:engine=seismic")


def _kill_soon(pid: int, delay: float) -> threading.Thread:
    def kill():
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def test_a_shard_server_killed_during_a_batch_loses_nothing(cluster, sharded, scifact, workspace, caplog):
    import logging

    from rankstack.distributed.sharded import ShardedResources

    caplog.set_level(logging.WARNING, logger="rankstack.distributed.router")
    queries = list(scifact.queries.values())
    want = workspace.retriever("dense:model=hash:256").retrieve(queries, 20)
    res = ShardedResources(sharded, address=cluster.address, replicas=2, timeout_s=30)
    try:
        dense = res.retriever("dense")
        victim = ray.get(res.router.replicas[1][0].health.remote())["pid"]
        got = []
        for i in range(0, len(queries), 10):  # the batch in slices; the process dies a third of the way in
            if i == 100:
                os.kill(victim, signal.SIGKILL)
            got += dense.retrieve(queries[i:i + 10], 20)
    finally:
        res.close()
    assert len(got) == len(queries)
    assert all(same_run(a, b, tol=1e-6) for a, b in zip(got, want))
    assert any("shard 1 did not answer" in r.getMessage() for r in caplog.records)  # it was retried, not lucky


def test_a_shard_with_no_live_replica_fails_loudly_or_is_flagged(cluster, sharded, scifact):
    from rankstack.distributed.router import ShardRouter, ShardUnavailable

    from rankstack.retrieval import kinds

    queries = list(scifact.queries.values())[:5]
    vec = np.random.default_rng(0).standard_normal((len(queries), 256)).astype(np.float32)
    dense = kinds.settings_of("dense", {"model": "hash:256"})
    folder = next(e.folder for e in sharded.entries if e.spec == "dense")
    for allow in (False, True):
        router = ShardRouter(sharded, address=cluster.address, replicas=1, max_restarts=0, attempts=2,
                             allow_partial=allow, timeout_s=20)
        try:
            pid = ray.get(router.replicas[2][0].health.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            if not allow:
                with pytest.raises(ShardUnavailable, match="shard 2"):
                    router.search(folder, dense, None, vec, 10, {}, len(vec))
            else:
                router.take_failed()
                parts = router.search(folder, dense, None, vec, 10, {}, len(vec))
                assert set(router.take_failed()) == {2}
                lo, hi = sharded.shards[2]["start"], sharded.shards[2]["start"] + sharded.shards[2]["num_docs"]
                assert all(len(p) == 10 and not ((p >= lo) & (p < hi)).any() for p, _ in parts)
        finally:
            router.close()


def test_query_workers_give_the_local_runs_even_when_one_dies(cluster, scifact_dir, tmp_path, caplog):
    """rankstack eval's query pool: same rankings as the local path; a worker killed mid-batch is replaced."""
    import logging

    from rankstack.distributed.queries import QueryPool
    from rankstack.pipeline import DatasetWorkspace, compile_pipeline

    caplog.set_level(logging.WARNING, logger="rankstack.distributed.queries")
    folder = beir_subset(scifact_dir, tmp_path / "sub", 300, 500)
    ds = load_beir(folder)
    root = tmp_path / "ws"
    ws = DatasetWorkspace(ds, root, model="hash:256")
    queries = list(ds.queries.values())
    want = compile_pipeline("hybrid-rrf", ws).run(queries, 100).rankings  # builds the indexes workers open
    pool = QueryPool({"dataset": str(folder), "split": "test", "index_root": str(root), "model": "hash:256"},
                     address=cluster.address, workers=2, chunk=1)
    try:
        pool.run("hybrid-rrf", queries[:4], 100)  # pipelines compiled, so the batch below is all queries
        t0 = time.perf_counter()
        killer = _kill_soon(pool.pids()[0], 0.3)
        out = pool.run("hybrid-rrf", queries, 100)
        took = time.perf_counter() - t0
        killer.join()
    finally:
        pool.close()
    assert took > 0.3, "the batch ended before the kill; the test did not test anything"
    assert any("died" in r.getMessage() for r in caplog.records)
    assert [r.query.qid for r in out.rankings] == [q.qid for q in queries]
    assert all([(c.docid, c.score) for c in a.candidates] == [(c.docid, c.score) for c in b.candidates]
               for a, b in zip(out.rankings, want))


def test_rerank_on_query_workers_equals_local(cluster):
    """rankstack rerank --workers: candidates travel with their passages (workers hold no documents); the reranked
    run is the local one (the CLI's run files on DL19 with MiniLM: same docids at every rank, scores within 1.2e-7)."""
    from rankstack.distributed.queries import QueryPool
    from rankstack.eval.datasets import load_trec_dl
    from rankstack.pipeline import Given, Pipeline, Rerank
    from rankstack.rerank.factory import RerankerSpec, build_reranker
    from tests.conftest import shared_path

    rankings = load_trec_dl(shared_path("trec-dl", "dl19")).candidates[:6]
    spec = RerankerSpec.parse("embedding:model=hash:256")
    want = Pipeline(Given(rankings), [Rerank(build_reranker(spec), spec.stage_depth)]).run(
        [r.query for r in rankings], 30).rankings
    pool = QueryPool({}, address=cluster.address, workers=2, chunk=2)
    try:
        got = pool.rerank(str(spec), rankings, 30).rankings
    finally:
        pool.close()
    assert [r.query.qid for r in got] == [r.query.qid for r in rankings]
    assert all(len(r.candidates) == 30 for r in got)
    # same docids at every rank; scores up to float rounding (a worker's batches and BLAS threads differ)
    assert all(same_run(a, b, tol=1e-6) for a, b in zip(got, want))
    assert [[c.docid for c in r.candidates] for r in got] != [[c.docid for c in r.candidates[:30]] for r in rankings]


def test_service_fronts_a_sharded_collection(sharded, scifact):
    pytest.importorskip("fastapi", reason="needs rankstack[service]")
    from fastapi.testclient import TestClient

    from rankstack.distributed.sharded import ShardedResources
    from rankstack.service.app import create_app
    from rankstack.service.config import Settings

    settings = Settings.model_validate({"collections": {"sc": {
        "name": "sc", "indexes": ["bm25", "dense"], "encoder": "hash:256", "pipeline": "hybrid-rrf",
        "sharded": {"path": str(sharded.path)}}}})
    q = next(iter(scifact.queries.values()))
    want = [c.docid for c in ShardedResources(sharded).retriever("bm25").retrieve([q], 5)[0].candidates]
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/collections/sc/search", json={"query": q.text, "k": 5, "pipeline": {"retrievers": ["bm25"]}})
        assert r.status_code == 200 and [h["docid"] for h in r.json()["results"]] == want
        assert "partial" not in r.json()
        h = c.get("/v1/collections/sc/health").json()
        assert h["ok"] and [s["documents"] for s in h["shards"]] == [1295, 1296, 1296, 1296]
        r = c.post("/v1/collections/sc/documents", json={"documents": [{"docid": "x", "text": "new"}]})
        assert r.status_code == 422 and "read-only" in r.json()["error"]
        assert c.get(f"/v1/collections/sc/documents/{want[0]}").json()["docid"] == want[0]


def test_bad_input(sharded, tmp_path):
    import shutil

    from rankstack.distributed.build import build_sharded
    from rankstack.distributed.sharded import ShardedResources
    from rankstack.records import Document
    from rankstack.retrieval.sharded import ShardSet, shard_ranges

    with pytest.raises(BadInput, match="at least one document"):
        shard_ranges(3, 4)
    with pytest.raises(BadInput, match="not a retriever"):
        build_sharded([Document(docid="a", text="x")], tmp_path / "x", shards=1, indexes=("colbert",))
    with pytest.raises(BadInput, match="same index"):
        build_sharded([Document(docid="a", text="x")], tmp_path / "x", shards=1, indexes=("maxsim", "muvera"))
    with pytest.raises(BadInput, match="duplicate docid"):
        build_sharded([Document(docid="a", text="x")] * 2, tmp_path / "x", shards=1)
    res = ShardedResources(sharded)
    with pytest.raises(BadInput, match="hold 'hash:256"):
        res.retriever("dense:model=sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(BadInput, match="shards of .* hold"):
        res.retriever("dense:index=(hnsw)")
    broken = tmp_path / "broken"
    shutil.copytree(sharded.path, broken)
    shutil.rmtree(broken / "shard-001")
    with pytest.raises(IndexCorrupt, match="shard-001"):
        ShardSet.load(broken)
    (broken / "docids.json").write_text("[")
    with pytest.raises(IndexCorrupt, match="docids.json"):
        ShardSet.load(broken)
