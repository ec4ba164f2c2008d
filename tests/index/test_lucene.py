from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")

from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound
from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.index.lucene import LuceneIndex
from rankstack.records import Document, Query, Run
from rankstack.retrieval.bm25 import BM25Retriever


@pytest.fixture(scope="module")
def nf_index(tmp_path_factory, nfcorpus_dir):
    ds = load_beir(nfcorpus_dir)
    return ds, LuceneIndex.build(ds.corpus.values(), tmp_path_factory.mktemp("nf") / "bm25")


def test_nfcorpus_matches_pyserini_bm25_flat(nf_index):
    """Pyserini's published BM25-flat figures on NFCorpus: nDCG@10 0.3218, R@100 0.2457."""
    ds, index = nf_index
    rankings = BM25Retriever(index).retrieve(list(ds.queries.values()), 1000)
    agg = evaluate(Run.from_rankings(rankings), ds.qrels, ["nDCG@10", "R@100"]).aggregate
    assert agg["nDCG@10"] == pytest.approx(0.3218, abs=0.003)
    assert agg["R@100"] == pytest.approx(0.2457, abs=0.003)


def test_rankings_are_sorted_and_k_is_respected(nf_index):
    ds, index = nf_index
    r = BM25Retriever(index, with_documents=True).retrieve([Query(qid="x", text="breast cancer statin")], 7)[0]
    assert len(r) == 7
    assert [c.score for c in r.candidates] == sorted((c.score for c in r.candidates), reverse=True)
    assert r.candidates[0].document.docid == r.candidates[0].docid


def test_bad_queries(nf_index):
    _, index = nf_index
    bm25 = BM25Retriever(index)
    with pytest.raises(BadInput, match="empty"):
        bm25.retrieve([Query(qid="e", text="   ")], 10)
    with pytest.raises(BadInput, match="k must be a positive integer"):
        bm25.retrieve([Query(qid="e", text="x")], 0)
    with pytest.raises(BadInput, match="characters; the limit"):
        bm25.retrieve([Query(qid="e", text="x " * 5000)], 10)


def test_failed_rebuild_keeps_the_previous_index(tmp_path):
    docs = [Document(docid=str(i), text=f"document number {i} about topic {i % 3}") for i in range(20)]
    path = tmp_path / "ix"
    LuceneIndex.build(docs, path)

    def broken():
        yield from docs[:5]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        LuceneIndex.build(broken(), path)
    assert len(LuceneIndex(path)) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_index_errors(tmp_path):
    with pytest.raises(IndexNotFound):
        LuceneIndex(tmp_path / "missing")
    with pytest.raises(BadInput, match="empty corpus"):
        LuceneIndex.build([], tmp_path / "e")
    with pytest.raises(BadInput, match="duplicate docid"):
        LuceneIndex.build([Document(docid="a", text="x"), Document(docid="a", text="y")], tmp_path / "d")
    LuceneIndex.build([Document(docid="a", text="x")], tmp_path / "ok")
    shutil.rmtree(tmp_path / "ok" / "lucene")
    with pytest.raises(IndexCorrupt, match="lucene/ folder is missing"):
        LuceneIndex(tmp_path / "ok")


def test_batched_equals_single_query_search(nf_index):
    ds, index = nf_index
    queries = list(ds.queries.values())[:20]
    bm25 = BM25Retriever(index, threads=2)
    batched = bm25.retrieve(queries, 50)
    for q, b in zip(queries, batched):
        single = bm25.retrieve([q], 50)[0]
        assert single.docids == b.docids


def test_concurrent_searches_with_documents(nf_index):
    """The service searches from many threads at once; reading stored documents must be thread-safe."""
    from concurrent.futures import ThreadPoolExecutor

    ds, index = nf_index
    bm25 = BM25Retriever(index, with_documents=True)
    queries = list(ds.queries.values())[:64]
    expected = {q.qid: bm25.retrieve([q], 10)[0] for q in queries}
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda q: bm25.retrieve([q], 10)[0], queries))
    for r in got:
        assert [c.document.text for c in r.candidates] == [c.document.text for c in expected[r.query.qid].candidates]
