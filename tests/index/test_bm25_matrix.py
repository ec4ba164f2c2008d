"""The BM25 matrix engine against Pyserini itself: the same top-1000 runs (docids and float32 scores, documents tied
at the cut aside) on every SciFact and NFCorpus test query; Lucene's one-byte length codes against Lucene's own."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")

from rankstack.errors import BadInput, IndexCorrupt  # noqa: E402
from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.index.bm25_matrix import BM25Matrix, encode_length, lucene_length_table  # noqa: E402
from rankstack.pipeline import DatasetWorkspace  # noqa: E402
from tests.conftest import same_lucene_run as same_run  # noqa: E402


def test_length_codes_are_lucenes():
    table = lucene_length_table()  # starts the JVM with Pyserini's class path
    from jnius import autoclass

    sf = autoclass("org.apache.lucene.util.SmallFloat")
    lengths = np.concatenate([np.arange(0, 3000), np.array([4095, 4096, 65535, 1_000_000, 2**31 - 1])])
    want = [sf.intToByte4(int(n)) % 256 for n in lengths]
    assert encode_length(lengths, table).tolist() == want


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_runs_equal_pyserini_on_every_test_query(name, tmp_path):
    from tests.conftest import shared_path

    ds = load_beir(shared_path("beir", name))
    ws = DatasetWorkspace(ds, tmp_path)
    queries = list(ds.queries.values())
    lucene = ws.retriever("bm25").retrieve(queries, 1000)
    matrix = ws.retriever("bm25:engine=matrix").retrieve(queries, 1000)
    bad = [q.qid for q, a, b in zip(queries, matrix, lucene)
           if not same_run([(c.docid, c.score) for c in a.candidates], [(c.docid, c.score) for c in b.candidates])]
    assert not bad, f"{len(bad)} of {len(queries)} queries differ from Pyserini, e.g. {bad[:5]}"
    # other k1/b and batched threads: still Lucene's
    q = queries[:20]
    a = ws.retriever("bm25:k1=1.2,b=0.75,engine=matrix,threads=2").retrieve(q, 100)
    b = ws.retriever("bm25:k1=1.2,b=0.75").retrieve(q, 100)
    assert all(same_run([(c.docid, c.score) for c in x.candidates], [(c.docid, c.score) for c in y.candidates])
               for x, y in zip(a, b))


def test_save_load_and_errors(tmp_path):
    from rankstack.index.lucene import LuceneIndex
    from rankstack.records import Document

    docs = [Document(docid=f"d{i}", text=t) for i, t in enumerate(
        ["the cat sat on the mat", "dogs chase cats", "a bird in the hand", "cats and cats and cats"])]
    m = BM25Matrix.build(docs)
    m.check_against(LuceneIndex.build(docs, tmp_path / "lucene"))
    m.save(tmp_path / "m")
    again = BM25Matrix.load(tmp_path / "m")
    assert again.search(["cats"], 3) == m.search(["cats"], 3) and m.search(["cats"], 3)[0][0][0] == "d3"
    assert m.search(["zebra"], 3) == [[]]
    other = LuceneIndex.build(docs[:3], tmp_path / "lucene3")
    with pytest.raises(IndexCorrupt, match="does not match"):
        m.check_against(other)
    (tmp_path / "m" / "postings.npz").write_bytes(b"junk")
    with pytest.raises(IndexCorrupt, match="rebuild"):
        BM25Matrix.load(tmp_path / "m")
    with pytest.raises(BadInput):
        m.search(["cats"], 0)
