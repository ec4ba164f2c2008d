"""Compressed indexes against exact search, round-trips through disk, and their failure modes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt, UnknownDocid
from rankstack.index.binary import ResidualBinaryCodec
from rankstack.index.base import VectorIndex
from rankstack.index.compressed import CompressedIndex, IndexSpec
from rankstack.index.registry import build_vector_index, load_vector_index, open_index

pytest.importorskip("faiss", reason="compressed indexes need rankstack[cpu] (faiss-cpu)")


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors (like embeddings) and queries near some of them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 64))
    x = centres[rng.integers(0, 20, 2000)] + 0.6 * rng.standard_normal((2000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[:25] + 0.05 * rng.standard_normal((25, 64)).astype(np.float32)
    ids = [f"d{i}" for i in range(2000)]
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :20]
    return x, q, ids, exact


def _recall(index, topk, exact):
    got = [{int(i[1:]) for i, _ in row} for row in index.docid_pairs(topk)]
    return float(np.mean([len(g & set(e.tolist())) / len(e) for g, e in zip(got, exact)]))


SPECS = {  # spec -> minimum recall@20 against exact search on this data
    "flat": 1.0, "ivf-flat:nlist=16,nprobe=16": 1.0, "hnsw:ef_search=64": 0.95, "sq8": 0.9,
    "pq:m=16,nbits=6": 0.5, "ivf-pq:nlist=8,m=16,nbits=6,nprobe=8": 0.5,
    "pq:m=16,nbits=6,rescore=float32,multiplier=8": 0.97, "binary:rescore=float16,multiplier=10": 0.9,
    "binary:bits=2,mode=asymmetric,rescore=int8,multiplier=5": 0.95,
}


@pytest.mark.parametrize("text", list(SPECS))
def test_recall_save_load_and_updates(text, data, tmp_path):
    x, q, ids, exact = data
    index = build_vector_index(IndexSpec.parse(text), ids, x, meta={"model": "test"})
    assert isinstance(index, VectorIndex)
    before = index.search(q, 20)
    assert _recall(index, before, exact) >= SPECS[text]
    index.save(tmp_path / "ix")
    loaded = load_vector_index(tmp_path / "ix", dim=64)
    assert type(loaded) is type(index) and type(open_index(tmp_path / "ix")) is type(index)
    again = loaded.search(q, 20)
    assert np.array_equal(again.ids, before.ids) and np.allclose(again.scores, before.scores)
    # remove and re-add: removed docs never come back, an upserted one is found again, docids survive a reload
    loaded.remove(["d0", "d1"])
    top = {d for row in loaded.docid_pairs(loaded.search(q[:2], 50)) for d, _ in row}
    assert not top & {"d0", "d1"}
    loaded.add(["d0"], x[:1])
    loaded.add(["d0"], x[:1], upsert=True)
    loaded.save(tmp_path / "ix")
    final = load_vector_index(tmp_path / "ix")
    assert len(final) == 1999 and "d0" in final and "d1" not in final
    if text != "pq:m=16,nbits=6" and not text.startswith("ivf-pq") and not text.startswith("binary:bits"):
        assert final.docid_pairs(final.search(x[:1], 1))[0][0][0] == "d0"


def test_loaded_docids_stay_compact_until_edited(data, tmp_path):
    x, q, ids, _ = data
    CompressedIndex.build(IndexSpec.parse("binary"), ids, x).save(tmp_path / "b")
    index = CompressedIndex.load(tmp_path / "b")
    assert index._ids.by_slot is None and index._ids.nbytes() < 30 * len(ids)
    assert index.docids == ids and len(index) == 2000
    top = index.docid_pairs(index.search(q[:1], 3))[0]
    assert index._ids.by_slot is None and all(d in ids for d, _ in top)
    assert "d7" in index and index._ids.by_slot is not None  # membership thaws the table


def test_rescoring_returns_exact_scores(data):
    x, q, ids, _ = data
    index = CompressedIndex.build(IndexSpec.parse("binary:rescore=float32,multiplier=4"), ids, x)
    top = index.search(q, 10)
    rows = np.array([[int(d[1:]) for d in index._ids.names(r)] for r in top.ids])
    np.testing.assert_allclose(top.scores, np.take_along_axis(q @ x.T, rows, axis=1), rtol=1e-6)
    raw = index.search(q, 10, rescore=False)
    assert not np.allclose(raw.scores, top.scores)


def test_residual_planes_reduce_error(data):
    x, *_ = data
    errors = []
    for bits in (1, 2, 3, 4):
        codec = ResidualBinaryCodec(64, bits).fit(x)
        planes, scales = codec.encode(x)
        assert planes.shape == (2000, bits, 8) and codec.code_bytes == bits * 8 + 2 * bits
        errors.append(float(np.linalg.norm(codec.decode(planes, scales) - x)))
        # asymmetric scores are exactly q . decode(x)
        np.testing.assert_allclose(codec.asymmetric_scores(x[:3], planes, scales),
                                   x[:3] @ codec.decode(planes, scales).T, rtol=1e-4, atol=1e-4)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.35 * errors[0]


def test_hamming_scores_match_brute_force(data):
    x, q, ids, _ = data
    index = CompressedIndex.build(IndexSpec.parse("binary"), ids, x)
    top = index.search(q, 5)
    codec = index._codec
    qb = codec.signs(codec.encode(q)[0])[:, 0]
    xb = codec.signs(codec.encode(x)[0])[:, 0]
    agree = qb @ xb.T  # = dim - 2 * hamming
    for r in range(len(q)):
        assert np.array_equal(top.scores[r], np.sort(agree[r])[::-1][:5])


def test_spec_parsing_and_errors():
    s = IndexSpec.parse("ivf-pq:nlist=1024,m=48,nprobe=32,rescore=int8,multiplier=8")
    assert (s.kind, s.nlist, s.m, s.nprobe, s.rescore, s.rescore_multiplier) == ("ivf-pq", 1024, 48, 32, "int8", 8)
    assert s.label == "IVF1024,PQ48x8+rescore-int8x8"
    with pytest.raises(BadInput, match="unknown index kind"):
        IndexSpec.parse("lsh")
    with pytest.raises(BadInput, match="has no option 'q'; its options are nlist, nprobe"):
        IndexSpec.parse("pq:q=3")
    with pytest.raises(BadInput, match="m='x' is not a valid int"):
        IndexSpec.parse("pq:m=x")
    # canonical text keeps only what differs from the defaults; search-time fields are not part of the build key
    s = IndexSpec.parse("hnsw:ef_search=64,hnsw_m=16")
    assert str(s) == "hnsw:hnsw_m=16,ef_search=64" and s.build_key() == "hnsw:hnsw_m=16"
    assert s.search_params() == {"ef_search": 64} and IndexSpec.parse(str(s)) == s
    with pytest.raises(BadInput, match="flat index is exact already"):
        IndexSpec.parse("flat:rescore=int8")
    with pytest.raises(BadInput, match="takes no search parameter"):
        build_vector_index(IndexSpec.parse("sq8"), ["a", "b"], np.eye(2, 8, dtype=np.float32)).search(
            np.ones((1, 8), np.float32), 1, nprobe=3)
    with pytest.raises(BadInput, match="Hamming search needs 1-bit"):
        IndexSpec.parse("binary:bits=2")
    with pytest.raises(BadInput, match="divisible by m"):
        CompressedIndex(100, IndexSpec.parse("pq:m=48"))
    with pytest.raises(BadInput, match="training vectors"):
        CompressedIndex.build(IndexSpec.parse("ivf-flat:nlist=64"), ["a"] * 1, np.ones((1, 8), np.float32))


def test_bad_input_and_corrupt_files(data, tmp_path):
    x, q, ids, _ = data
    index = CompressedIndex.build(IndexSpec.parse("pq:m=8,nbits=4,rescore=float32"), ids, x)
    with pytest.raises(DimensionMismatch, match="dimension 32"):
        index.search(np.ones((1, 32), np.float32), 5)
    with pytest.raises(UnknownDocid):
        index.remove(["nope"])
    with pytest.raises(BadInput, match="already in the index"):
        index.add(["d3"], x[:1])
    path = index.save(tmp_path / "ix")
    with pytest.raises(DimensionMismatch, match="64-d vectors but 32-d"):
        CompressedIndex.load(path, dim=32)
    # wrong code size: params claim a different number of bytes per vector
    params = json.loads((path / "params.json").read_text())
    params["code_bytes"] = 48
    (path / "params.json").write_text(json.dumps(params))
    with pytest.raises(IndexCorrupt, match="code size"):
        CompressedIndex.load(path)
    index.save(path)
    raw = (path / "faiss.index").read_bytes()
    (path / "faiss.index").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexCorrupt, match="truncated"):
        CompressedIndex.load(path)
    index.save(path)
    (path / "docids.bin").write_bytes((path / "docids.bin").read_bytes()[:-3])
    with pytest.raises(IndexCorrupt, match="docid files disagree"):
        CompressedIndex.load(path)
    index.save(path)
    (path / "rescore" / "vectors.npy").write_bytes((path / "rescore" / "vectors.npy").read_bytes()[:1000])
    with pytest.raises(IndexCorrupt, match="rescoring tier"):
        CompressedIndex.load(path)


def test_binary_code_size_mismatch(data, tmp_path):
    x, _, ids, _ = data
    path = CompressedIndex.build(IndexSpec.parse("binary"), ids, x).save(tmp_path / "b")
    np.save(path / "planes.npy", np.zeros((2000, 1, 4), np.uint8))
    with pytest.raises(IndexCorrupt, match="wrong code size"):
        CompressedIndex.load(path)


def test_crash_during_save_keeps_previous_index(data, tmp_path, monkeypatch):
    x, q, ids, _ = data
    index = CompressedIndex.build(IndexSpec.parse("binary:rescore=float32"), ids, x)
    path = index.save(tmp_path / "ix")
    expected = index.search(q, 10)
    index.add(["new"], x[:1] * -1)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    monkeypatch.undo()
    reopened = CompressedIndex.load(path)
    assert len(reopened) == 2000 and "new" not in reopened
    assert np.array_equal(reopened.search(q, 10).ids, expected.ids)


def test_dense_retriever_runs_over_a_compressed_index():
    """The compressed index plugs into the retriever in place of the exact one and, with rescoring, ranks the
    same top documents with the same exact scores."""
    from rankstack.index.faiss_flat import DenseFlatIndex
    from rankstack.records import Document, Query
    from rankstack.retrieval.dense import DenseRetriever
    from rankstack.retrieval.encoders import HashingEncoder

    words = "cat dog wolf fish python rust memory safety language purr loyal bird tree river stone".split()
    rng = np.random.default_rng(5)
    docs = [Document(docid=f"d{i}", text=" ".join(rng.choice(words, 6))) for i in range(400)]
    enc = HashingEncoder(64)
    vecs = enc.encode_documents(docs)
    exact = DenseFlatIndex(64)
    exact.add([d.docid for d in docs], vecs)
    comp = CompressedIndex.build(IndexSpec.parse("binary:rescore=float32,multiplier=20"), [d.docid for d in docs], vecs)
    qs = [Query(qid="a", text="cat purr"), Query(qid="b", text="rust memory safety")]
    want = DenseRetriever(enc, exact).retrieve(qs, 5)
    got = DenseRetriever(enc, comp).retrieve(qs, 5)
    for w, g in zip(want, got):
        assert [c.score for c in g.candidates] == pytest.approx([c.score for c in w.candidates], rel=1e-6)
        assert {c.docid for c in g.candidates if c.score > w.candidates[-1].score} == \
            {c.docid for c in w.candidates if c.score > w.candidates[-1].score}


KERNEL_SPECS = ["binary", "binary:rescore=float32,multiplier=4", "binary:rescore=int8,multiplier=4",
                "pq:m=16,rescore=float16,multiplier=4", "opq-pq:m=16", "opq-pq:m=16,rescore=int8,multiplier=8"]


@pytest.fixture(scope="module")
def small():
    """300 clustered unit vectors (enough to train 8-bit PQ) and 3 queries: the Triton interpreter spends about
    a second per scanned block, so the kernel-path tests stay small."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((10, 64))
    x = centres[rng.integers(0, 10, 300)] + 0.6 * rng.standard_normal((300, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, x[:3] + 0.05 * rng.standard_normal((3, 64)).astype(np.float32), [f"d{i}" for i in range(300)], None


@pytest.mark.parametrize("text", KERNEL_SPECS)
def test_tensor_queries_run_the_kernels_and_agree_with_the_cpu_path(text, small, monkeypatch):
    """Under TRITON_INTERPRET=1 (set by conftest) a torch tensor query takes the Triton path (Hamming or PQ ADC
    scan, gather+dot rescoring); it must return what the FAISS/numpy path returns for the same numpy query:
    identical ids where the scores are not tied, and scores within float rounding."""
    pytest.importorskip("triton", reason="the kernel path needs rankstack[kernels]")
    import torch

    from rankstack import kernels

    x, q, ids, _ = small
    index = build_vector_index(IndexSpec.parse(text), ids, x)
    calls = []
    for name in ("hamming_topk", "pq_adc_topk", "rescore"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    for removed in (False, True):
        if removed:  # tombstoned rows stay in the codes the kernels scan: both paths must drop them
            index.remove([d for d, _ in index.docid_pairs(index.search(q[:1], 4))[0]])
            assert index._tombstones
        cpu = index.search(q, 15)
        dev = index.search(torch.from_numpy(q), 15)
        assert calls and ("rescore" in calls) == ("rescore=" in text)
        np.testing.assert_allclose(dev.scores, cpu.scores, rtol=1e-5, atol=1e-5)
        exact = 0
        for sc_c, sc_d, a, b in zip(cpu.scores, dev.scores, cpu.ids, dev.ids):
            assert (a >= 0).all() and (b >= 0).all()  # 15 live hits, none of them removed
            # scores equal within float rounding form a group whose members may come out in another order (FAISS
            # breaks ties its own way); a group cut by k may hold different members, but as many
            for s in np.unique(sc_c):
                in_c, in_d = set(a[np.isclose(sc_c, s, atol=2e-5)]), set(b[np.isclose(sc_d, s, atol=2e-5)])
                assert len(in_c) == len(in_d)
                if not np.isclose(s, sc_c[-1], atol=2e-5):
                    assert in_c == in_d
            exact += int(np.array_equal(a, b))
        assert exact >= 1  # not everything is a tie: most rows come out identical
        live = {index._ids.slot_of(d) for d in index.docids}
        assert set(dev.ids.ravel().tolist()) <= live


def test_tensor_queries_on_kinds_without_a_kernel_take_the_cpu_path(small):
    import torch

    x, q, ids, _ = small
    index = build_vector_index(IndexSpec.parse("sq8"), ids, x)
    a, b = index.search(q[:3], 5), index.search(torch.from_numpy(q[:3]), 5)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)


@pytest.mark.parametrize("text", ["ivf-flat:nlist=16,nprobe=4", "sq8", "pq:m=16,nbits=6",
                                  "ivf-pq:nlist=8,m=16,nbits=6,nprobe=4"])
def test_removals_are_tombstones_that_search_like_faiss_removal(text, data):
    """A removal is a tombstone filtered at search: the results equal those after FAISS's own removal of the same
    vectors; past 1/32 of the index (at least 256) the tombstones are removed from FAISS in one go."""
    x, q, ids, _ = data
    index = build_vector_index(IndexSpec.parse(text), ids, x)
    index.remove(ids[:200])
    assert len(index._tombstones) == 200 and index._faiss.ntotal == 2000 and len(index) == 1800
    filtered = index.docid_pairs(index.search(q, 30))
    index.purge_tombstones()
    assert index._faiss.ntotal == 1800 and not index._tombstones
    assert index.docid_pairs(index.search(q, 30)) == filtered
    assert not {d for row in filtered for d, _ in row} & set(ids[:200])
    index.remove(ids[200:500])  # 300 > 256: removed from FAISS on the spot
    assert not index._tombstones and index._faiss.ntotal == 1500 and len(index) == 1500


@pytest.mark.parametrize("text", ["binary", "binary:bits=2,mode=asymmetric", "binary:rescore=float16,multiplier=4"])
def test_binary_removals_are_tombstones_until_compaction(text, data, tmp_path):
    """Binary codes grow in place and a removal is a tombstone (filtering the code arrays per write was O(n)):
    every search equals the codec's own scan over the rows still live, before and after the tombstones pass 1/32
    of the index (at least 256) and are dropped, through upserts, and across a save and load."""
    x, q, ids, _ = data
    index = build_vector_index(IndexSpec.parse(text), ids, x)
    codec = index._codec
    full_planes, full_scales = index._planes.copy(), index._scales.copy()  # row i is d{i} after build
    mode = index._binary_mode(None)
    rescore = "rescore=" in text

    def expect(live: np.ndarray, k: int):
        if rescore:  # exact inner products of the live rows among the codes' candidates: check ids only
            return None
        if mode == "hamming":  # +-1 sign agreement from the bits themselves
            qp = codec.encode(q)[0][:, 0]
            dist = np.unpackbits(qp[:, None] ^ full_planes[live][None, :, 0], axis=-1).sum(-1, dtype=np.int64)
            agree = (index.dim - 2 * dist).astype(np.float32)
            pos = np.argsort(-agree, axis=1, kind="stable")[:, :k]
            s = np.take_along_axis(agree, pos, 1)
        else:
            s, pos = codec.topk(q, full_planes[live], full_scales[live], k, mode)
        return s.astype(np.float32), np.flatnonzero(live)[pos]

    def check(live_ids: set[str], k: int = 30):
        got = index.search(q, k)
        pairs = index.docid_pairs(got)
        assert all(d in live_ids for row in pairs for d, _ in row) and all(len(r) == k for r in pairs)
        live = np.array([f"d{i}" in live_ids for i in range(len(ids))])
        want = expect(live, k)
        if want is None:
            return pairs
        s, rows = want
        np.testing.assert_allclose(got.scores, s, rtol=1e-6)
        for sc, a, b in zip(s, got.ids, rows):  # ids equal except within a tie at the cut
            assert set(a[sc > sc[-1]].tolist()) == set(b[sc > sc[-1]].tolist())
        return pairs

    live = set(ids)
    index.remove(ids[:200])
    live -= set(ids[:200])
    assert len(index._tombstones) == 200 and index._planes.shape[0] == 2000 and len(index) == 1800
    filtered = check(live)
    index.purge_tombstones()
    assert index._planes.shape[0] == 1800 and not index._tombstones
    assert check(live) == filtered
    index.remove(ids[200:500])  # 300 > 256: dropped from the codes on the spot
    live -= set(ids[200:500])
    assert not index._tombstones and index._planes.shape[0] == 1500
    check(live)
    # upserts: the old row is a tombstone, the new one appended in place (re-encoded from the same vector)
    index.add(ids[600:650], x[600:650], upsert=True)
    assert len(index._tombstones) == 50 and index._planes.shape[0] == 1550 and len(index) == 1500
    got = index.docid_pairs(index.search(x[600:603], 1))
    assert [row[0][0] for row in got] == ids[600:603]
    index.save(tmp_path / "ix")
    loaded = load_vector_index(tmp_path / "ix", dim=64)
    assert not loaded._tombstones and loaded._planes.shape[0] == 1500
    assert loaded.docid_pairs(loaded.search(q, 30)) == index.docid_pairs(index.search(q, 30))
    loaded.add(["new"], x[:1])  # a loaded index takes writes too
    assert loaded.docid_pairs(loaded.search(x[:1], 1))[0][0][0] == "new"
