"""A retrieval kind defined only in a test file (TF-IDF, tests/toy_kind.py), registered in one line, runs through
every place an index lives: ``rankstack eval``, ``rankstack index`` + ``search --index``, a service collection
(ingest, upsert, delete, kill -9 and recovery in a real server process) and a 2-shard collection. Its rankings are
checked against TF-IDF computed here directly over the documents (an independent brute force)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from rankstack.cli import main
from rankstack.eval.datasets import load_beir
from rankstack.retrieval import kinds
from tests.conftest import beir_subset, kill_while_writing
from tests.toy_kind import DIM, TFIDF, terms

K = 10


@pytest.fixture(autouse=True, scope="module")
def registered():
    kinds.register(TFIDF)  # the one line that adds a kind
    yield
    kinds.unregister("tfidf")


@pytest.fixture(scope="module")
def subset(scifact_dir, tmp_path_factory):
    folder = beir_subset(scifact_dir, tmp_path_factory.mktemp("data") / "scifact-tfidf", 15, 300)
    return load_beir(folder), folder


def brute_force(docs, queries, k=K) -> dict[str, list[tuple[str, float]]]:
    """TF-IDF by its formula, one document and one query at a time (no index, no matrix)."""
    counts = {d.docid: dict(zip(*[x.tolist() for x in terms(d.contents)])) for d in docs}
    df = np.zeros(DIM, np.int64)
    for c in counts.values():
        df[list(c)] += 1
    n = len(counts)
    out = {}
    for q in queries:
        qt = dict(zip(*[x.tolist() for x in terms(q.text)]))
        scores = []
        for d, c in counts.items():
            s = sum(w * (1 + np.log(c[t])) * (np.log((1 + n) / (1 + df[t])) + 1) for t, w in qt.items() if t in c)
            if s > 0:
                scores.append((d, float(s)))
        scores.sort(key=lambda p: (p[1], p[0]), reverse=True)
        out[q.qid] = scores[:k]
    return out


def close(got: dict, want: dict) -> bool:
    """Same documents in the same order and scores within float32 rounding, query by query (ties at the cut
    aside: either document may be kept)."""
    for qid, w in want.items():
        g = got.get(qid, [])
        if len(g) != len(w) or not np.allclose([s for _, s in g], [s for _, s in w], rtol=1e-5):
            return False
        cut = w[-1][1] if w else 0
        if [d for d, s in g if s > cut * (1 + 1e-5)] != [d for d, s in w if s > cut * (1 + 1e-5)]:
            return False
    return True


def pairs(rankings) -> dict:
    return {r.query.qid: [(c.docid, c.score) for c in r.candidates] for r in rankings}


def test_the_library_does_not_name_the_toy_kind():
    root = Path(__file__).resolve().parents[1] / "rankstack"
    named = [p for p in root.rglob("*.py") if "tfidf" in p.read_text(encoding="utf-8").lower()]
    assert not named, f"library files that name the toy kind: {named}"


def test_eval_runs_the_toy_kind(subset, tmp_path, capsys):
    ds, folder = subset
    want = brute_force(list(ds.corpus.values()), list(ds.queries.values()))
    out = tmp_path / "runs"
    assert main(["-q", "eval", "--dataset", str(folder), "--pipeline", "tfidf", "--pipeline", "rrf(tfidf, bm25)",
                 "-k", str(K), "--index-root", str(tmp_path / "ix"), "--output-dir", str(out)]) == 0
    report = json.loads(next((out / ds.name).glob("report.*.json")).read_text())
    assert "tfidf" in json.dumps(report)
    from rankstack.eval.trec import read_run

    run = read_run(next((out / ds.name).glob("tfidf.*.trec")))
    assert close({q: run.ranked(q)[:K] for q in run.qids}, want)


def test_index_and_search_over_a_folder(subset, tmp_path, capsys):
    ds, folder = subset
    want = brute_force(list(ds.corpus.values()), list(ds.queries.values()))
    assert main(["-q", "index", "--dataset", str(folder), "--kind", "tfidf", "--output", str(tmp_path / "tf")]) == 0
    capsys.readouterr()
    topics = tmp_path / "topics.tsv"
    topics.write_text("".join(f"{q.qid}\t{q.text}\n" for q in ds.queries.values()))
    assert main(["-q", "search", "--index", str(tmp_path / "tf"), "--topics", str(topics), "-k", str(K),
                 "--format", "json"]) == 0
    got = {r["qid"]: [(h["docid"], h["score"]) for h in r["results"]] for r in json.loads(capsys.readouterr().out)}
    assert close(got, want)


def test_a_two_shard_collection_equals_one_index(subset, tmp_path):
    from rankstack.distributed.build import build_sharded
    from rankstack.distributed.sharded import ShardedResources

    ds, _ = subset
    docs, queries = list(ds.corpus.values()), list(ds.queries.values())
    sharded = build_sharded(docs, tmp_path / "sh", shards=2, indexes=("tfidf",), address=None)
    assert [s["num_docs"] for s in sharded.shards] == [150, 150]
    res = ShardedResources(sharded)
    got = pairs(res.retriever("tfidf").retrieve(queries, K))
    assert close(got, brute_force(docs, queries))  # collection-wide IDF: a shard's own would score otherwise


def test_a_service_collection_follows_writes(tmp_path):
    from rankstack.records import Document, Query
    from rankstack.service.collection import Collection
    from rankstack.service.config import CollectionConfig, PipelineConfig

    cfg = CollectionConfig(name="t", indexes=["tfidf"], pipeline={"retrievers": ["tfidf"]},
                           index_checkpoint_docs=5, index_merge_docs=8)
    col = Collection(tmp_path / "t", cfg)
    docs = [Document(docid=f"d{i}", text=f"alpha beta {'gamma ' * (i % 4)} item{i}") for i in range(30)]
    col.upsert(docs)
    col.upsert([Document(docid="d3", text="gamma gamma gamma delta")])
    col.delete("d7")
    queries = [Query(qid="q", text="gamma delta"), Query(qid="r", text="beta item12")]

    def check(c):
        got = pairs(c.search(queries, K, pipeline=PipelineConfig(spec="tfidf"))[0])
        assert close(got, brute_force([c.log[d] for d in c.log], queries))
        assert all("d7" not in {d for d, _ in r} for r in got.values())

    check(col)
    col.close()
    again = Collection(tmp_path / "t", cfg)  # reopened from its checkpoint and segments
    check(again)
    again.close()


def test_a_killed_server_loses_no_acknowledged_document(tmp_path, monkeypatch):
    import httpx

    from rankstack.service.process import free_port, start_server

    monkeypatch.setenv("RANKSTACK_KINDS", "tests.toy_kind:TFIDF")  # how another process finds the kind
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    cfg = tmp_path / "svc.toml"
    cfg.write_text('[default_collection]\nname = "x"\nindexes = ["tfidf"]\nindex_checkpoint_docs = 40\n'
                   'index_merge_docs = 100\n[default_collection.pipeline]\nretrievers = ["tfidf"]\n')
    data, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}/v1/collections/c"
    log = open(tmp_path / "server.log", "wb")
    proc = start_server(data, cfg, port, stdout=log, timeout=120)
    acked: list[str] = []
    stop = threading.Event()

    def writer():
        with httpx.Client(timeout=60) as c:
            for b in range(10_000):
                if stop.is_set():
                    return
                docs = [{"docid": f"b{b}-{i}", "text": f"common batch{b} item{i}"} for i in range(20)]
                try:
                    r = c.post(f"{base}/documents", json={"documents": docs})
                    assert r.status_code == 200, r.text
                    acked.extend(d["docid"] for d in docs)
                    if b % 3 == 2:  # and a delete now and then (in flight at the kill, it may or may not land)
                        gone = f"b{b - 1}-0"
                        acked.remove(gone)
                        assert c.delete(f"{base}/documents/{gone}").status_code == 200
                except httpx.TransportError:
                    return  # the server died mid-request: this write was never acknowledged

    kill_while_writing(proc, writer, acked, stop, 150)
    proc = start_server(data, cfg, port, stdout=log, timeout=120)
    try:
        with httpx.Client(timeout=60) as c:
            missing = [d for d in acked if c.get(f"{base}/documents/{d}").status_code != 200]
            assert not missing, f"{len(missing)} acknowledged documents lost, e.g. {missing[:3]}"
            r = c.post(f"{base}/search", json={"query": "common", "k": 1000, "return_documents": False,
                                               "pipeline": {"retrievers": ["tfidf"], "retrieve_depth": 1000}})
            assert r.status_code == 200, r.text
            found = {h["docid"] for h in r.json()["results"]}
            n = {x["name"]: x["documents"] for x in c.get(f"http://127.0.0.1:{port}/v1/collections").json()[
                "collections"]}["c"]
            assert set(acked) <= found and len(found) == n  # the index agrees with the log after recovery
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
