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
    bm25 = BM25Retriever(index)
    r = bm25.retrieve([Query(qid="x", text="breast cancer statin")], 7)[0]
    assert len(r) == 7 and r.candidates[0].document is None  # retrievers return ids and scores only
    assert [c.score for c in r.candidates] == sorted((c.score for c in r.candidates), reverse=True)
    with_docs = (bm25 % 7).run([Query(qid="x", text="breast cancer statin")], 7, with_documents=True).rankings[0]
    assert with_docs.docids == r.docids and all(c.document.docid == c.docid for c in with_docs.candidates)
    assert with_docs.candidates[0].document == ds.corpus[r.docids[0]]  # from the index's own document store


def test_bad_queries(nf_index):
    _, index = nf_index
    bm25 = BM25Retriever(index)
    with pytest.raises(BadInput, match="empty"):
        bm25.retrieve([Query(qid="e", text="   ")], 10)
    with pytest.raises(BadInput, match="k must be a positive integer"):
        bm25.retrieve([Query(qid="e", text="x")], 0)



def test_queries_of_any_length_search(nf_index):
    """Argument-retrieval queries are whole documents: more than Lucene's default 1,024 clauses. Terms absent
    from the corpus add nothing to BM25, so padding a query with 3,000 of them must not change its ranking."""
    _, index = nf_index
    bm25 = BM25Retriever(index)
    padding = " ".join(f"zzqx{i}" for i in range(3000))
    short, long = bm25.retrieve([Query(qid="s", text="statin"), Query(qid="l", text=f"statin {padding}")], 20)
    assert len(long.query.text) > 20_000
    assert [(c.docid, c.score) for c in long.candidates] == [(c.docid, c.score) for c in short.candidates]


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
    pipe = BM25Retriever(index).pipeline()
    queries = list(ds.queries.values())[:64]

    def search(q):
        return pipe.run([q], 10, with_documents=True).rankings[0]

    expected = {q.qid: [ds.corpus[d].text for d in search(q).docids] for q in queries}
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(search, queries))
    for r in got:
        assert [c.document.text for c in r.candidates] == expected[r.query.qid]
