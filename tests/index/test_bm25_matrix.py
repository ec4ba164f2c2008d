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


def test_vectorised_tiebreak_equals_the_plain_loop():
    """Pyserini's rounding and tie lowering, vectorised, against the rank-by-rank loop on score lists built to be
    hard: many ties, single 1e-4 steps right after ties, zeros, and runs of equal scores."""
    from rankstack.kernels.bm25_scores import tiebreak, tiebreak_reference

    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 300))
        kind = trial % 4
        if kind == 0:
            v = rng.uniform(0, 30, n)
        elif kind == 1:
            v = np.round(rng.uniform(5, 5.01, n), 4) + rng.choice([0, 1e-5, 4e-5, 6e-5], n)
        elif kind == 2:
            v = np.repeat(rng.uniform(0, 1e-3, max(1, n // 10)), 10)[:n]
        else:
            v = np.concatenate([np.zeros(n // 3), np.full(n // 3, 1e-4), rng.uniform(0, 3e-4, n - 2 * (n // 3))])
        pairs = [(f"d{int(x)}", np.float32(s)) for x, s in zip(rng.permutation(n * 3)[:n], v)]
        assert tiebreak(pairs) == tiebreak_reference(pairs), (trial, kind)
    many_ties = [(f"d{i:03d}", np.float32(7.0)) for i in range(150)]  # beyond the shortcut's 90: the loop decides
    assert tiebreak(many_ties) == tiebreak_reference(many_ties)
    from rankstack.kernels.bm25_scores import lowered_scores

    block = np.sort(np.round(rng.uniform(5, 5.02, (6, 150)), 4) + rng.choice([0, 1e-5, 6e-5], (6, 150)), axis=1)
    block = block[:, ::-1].astype(np.float32)  # a block of queries, judged row by row as one query each
    assert (lowered_scores(block) == np.stack([lowered_scores(row) for row in block])).all()


@pytest.mark.parametrize("impl", ["compiled", "numpy"])
def test_lowering_blocks_with_lengths_equal_the_plain_loop(impl):
    """Both lowerings (the numba kernel the engine runs, and the numpy one it falls back to without numba) on
    blocks of queries of different lengths, as the batched search hands them over: each row's first ``lengths``
    entries equal the rank-by-rank loop, the padding is 0."""
    from rankstack.kernels import bm25_scores as bm

    if impl == "compiled":
        pytest.importorskip("numba", reason="the compiled lowering needs numba (rankstack[fastscan])")
        fn = bm.lowered_scores
    else:
        fn = bm.lowered_scores_numpy
    rng = np.random.default_rng(3)
    for trial in range(300):
        rows, n = int(rng.integers(1, 9)), int(rng.integers(1, 200))
        base = rng.choice([rng.uniform(0, 30), 5.0, 1e-4], rows)[:, None]
        v = base + np.round(rng.uniform(0, 0.002, (rows, n)), 4) + rng.choice([0, 1e-5, 6e-5], (rows, n))
        if trial % 5 == 0:
            v[:, n // 2:] = base  # long runs of one score, past the numpy shortcut's 90 ties
        if trial % 7 == 0:
            v[:, -n // 4:] = 0.0  # zeros at the tail
        block = -np.sort(-v.astype(np.float32), axis=1)
        lengths = rng.integers(0, n + 1, rows)
        got = fn(block, lengths)
        for q in range(rows):
            m = int(lengths[q])
            want = [s for _, s in bm.tiebreak_reference([(f"{i:06d}", s) for i, s in enumerate(block[q, :m])])]
            assert got[q, :m].tolist() == want, (trial, q)
            assert (got[q, m:] == 0).all()
