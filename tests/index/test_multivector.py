"""Multi-vector indexes against brute force on seeded token vectors: exact MaxSim search, PLAID compression
(bit packing, reconstruction error shrinking with bits, exhaustive settings equal exact search over the
decompressed tokens), MUVERA encodings (closed forms that pin down sum/average and empty-partition filling), and
the bad-input paths."""

from __future__ import annotations

import numpy as np
import pytest

from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt, UnknownDocid
from rankstack.index.multivector import MultiVectorIndex, PlaidIndex, _pack_codes, _unpack_codes
from rankstack.index.muvera import FDEConfig, document_fdes, query_fdes
from rankstack.index.registry import open_index
from rankstack.retrieval.token_encoders import EncodedDocuments


def _corpus(seed=0, n=120, dim=32, topics=12):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, dim))
    lens = rng.integers(3, 40, n)
    vec = np.concatenate([centers[rng.integers(0, topics, l)] + 0.4 * rng.standard_normal((l, dim)) for l in lens])
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    ids = rng.integers(0, 500, len(vec)).astype(np.int32)
    enc = EncodedDocuments(vec, lens.astype(np.int64), ids, truncated=2)
    queries = []
    for _ in range(6):
        q = centers[rng.integers(0, topics, 8)] + 0.4 * rng.standard_normal((8, dim))
        queries.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return [f"doc{i}" for i in range(n)], enc, queries


def _brute(queries, tokens, offsets):
    return np.array([[(q @ tokens[offsets[i]:offsets[i + 1]].astype(np.float64).T).max(1).sum()
                      for i in range(len(offsets) - 1)] for q in queries])


def test_exact_search_equals_brute_force_and_survives_a_reload(tmp_path, monkeypatch):
    import rankstack.index.multivector as mv

    monkeypatch.setattr(mv, "_CHUNK_TOKENS", 97)  # many chunks, none on a document boundary by luck
    docids, enc, queries = _corpus()
    index = MultiVectorIndex.build(docids, enc, meta={"model": "m"})
    assert index.meta["truncated_documents"] == 2
    brute = _brute(queries, np.asarray(index.tokens, np.float32), index.offsets)
    scores, rows = index.search(queries, 10)
    want = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert np.array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, want, 1), rtol=1e-5, atol=1e-4)
    index.save(tmp_path / "mv")
    again = open_index(tmp_path / "mv")
    assert isinstance(again, MultiVectorIndex) and again.docids == docids
    s2, r2 = again.search(queries, 10)
    assert np.array_equal(r2, rows) and np.allclose(s2, scores)
    # candidate scoring agrees with the corpus sweep
    cand = index.score(queries, rows)
    np.testing.assert_allclose(cand, scores, rtol=1e-5, atol=1e-4)


def test_replaced_drops_and_appends_documents():
    docids, enc, queries = _corpus(n=10)
    index = MultiVectorIndex.build(docids, enc)
    extra = EncodedDocuments(enc.vectors[:5], np.array([5], np.int64), enc.token_ids[:5])
    new = index.replaced(["doc3", "doc7"], ["doc3b"], extra)
    assert new.docids == [d for d in docids if d not in ("doc3", "doc7")] + ["doc3b"]
    np.testing.assert_array_equal(np.asarray(new.doc_tokens(len(new) - 1)), np.asarray(enc.vectors[:5], np.float16))
    np.testing.assert_array_equal(new.doc_tokens(0), index.doc_tokens(0))


def _sub(enc, rows):
    """The documents ``rows`` of ``enc`` as their own EncodedDocuments."""
    off = enc.offsets
    idx = np.concatenate([np.arange(off[r], off[r + 1]) for r in rows])
    return EncodedDocuments(enc.vectors[idx], enc.lengths[rows], enc.token_ids[idx])


def test_in_place_updates_tombstone_and_append_and_equal_a_fresh_build(tmp_path, monkeypatch):
    """Writes in place: after every round of removals, replacements and appends (below and past the compaction
    threshold) search, candidate scoring, idf and a save equal an index built afresh from the live documents."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # MaxSim on the torch reference: the kernel has its own tests
    docids, enc, queries = _corpus(n=120)
    index = MultiVectorIndex.build(docids[:80], _sub(enc, np.arange(80)))
    live = {d: i for i, d in enumerate(docids[:80])}  # docid -> row of enc holding its tokens
    rng = np.random.default_rng(3)
    nxt = 80
    for step in range(8):
        gone = rng.choice(sorted(live), 4, replace=False).tolist()
        again = [d for d in sorted(live) if d not in gone][:2]  # replaced with other tokens
        new = [docids[nxt], docids[nxt + 1]] if nxt < 118 else []
        nxt += 2
        rows = [int(rng.integers(0, 120)) for _ in again] + [docids.index(d) for d in new]
        for d in gone:
            del live[d]
        live.update(zip(again + new, rows))
        index.update(gone, again + new, _sub(enc, np.array(rows)) if rows else None)
        order = sorted(live, key=lambda d: index.row_of[d])
        fresh = MultiVectorIndex.build(order, _sub(enc, np.array([live[d] for d in order])))
        assert len(index) == len(fresh) and index.docids == order
        for k in (5, 200):  # 200: past the live size, never a removed row
            s1, r1 = index.search(queries, k)
            s2, r2 = fresh.search(queries, k)
            got = [[(index.row_docids[r], round(float(x), 4)) for x, r in zip(ss, rr) if np.isfinite(x)]
                   for ss, rr in zip(s1, r1)]
            want = [[(fresh.docids[r], round(float(x), 4)) for x, r in zip(ss, rr) if np.isfinite(x)]
                    for ss, rr in zip(s2, r2)]
            assert got == want
        cand = index.rows(order[:7])
        np.testing.assert_allclose(index.score(queries, np.tile(cand, (len(queries), 1))),
                                   fresh.score(queries, np.tile(np.arange(7), (len(queries), 1))), rtol=1e-6)
        np.testing.assert_array_equal(index.idf()[: len(fresh.idf())], fresh.idf())
        if step == 0:
            assert index.tombstones > 0  # below the threshold: rows kept as tombstones
            back = MultiVectorIndex.load(index.save(tmp_path / "ix"))
            assert back.tombstones == 0 and back.docids == order
            np.testing.assert_array_equal(np.asarray(back.tokens), np.asarray(fresh.tokens))
    assert index.tombstones < 8 * 6  # compacted along the way (a tombstone per removal or replacement)
    with pytest.raises(BadInput, match="no tokens"):
        index.update([], ["empty"], EncodedDocuments(enc.vectors[:0], np.array([0]), enc.token_ids[:0]))
    with pytest.raises(UnknownDocid):
        index.rows([gone[0]])


def test_idf_counts_documents_not_occurrences():
    vec = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    enc = EncodedDocuments(vec, np.array([2, 2, 1]), np.array([7, 7, 7, 9, 8], np.int32))
    idf = MultiVectorIndex.build(["a", "b", "c"], enc).idf()
    assert idf[7] == pytest.approx(np.log(4 / 3))  # in two documents (twice in the first)
    assert idf[9] == pytest.approx(np.log(4 / 2)) and idf[8] == pytest.approx(np.log(4 / 2))


def test_bad_input_is_refused_with_a_fix(tmp_path):
    docids, enc, queries = _corpus(n=8)
    with pytest.raises(BadInput, match="empty corpus"):
        MultiVectorIndex.build([], EncodedDocuments(enc.vectors[:0], np.zeros(0, np.int64), enc.token_ids[:0]))
    empty_doc = EncodedDocuments(enc.vectors, np.concatenate([[0], enc.lengths[1:-1], [enc.lengths[0] +
                                                                                        enc.lengths[-1]]]),
                                 enc.token_ids)
    with pytest.raises(BadInput, match="no tokens"):
        MultiVectorIndex.build(docids, empty_doc)
    index = MultiVectorIndex.build(docids, enc)
    with pytest.raises(DimensionMismatch, match="same model|built with"):
        index.search([q[:, :16] for q in queries], 3)
    with pytest.raises(UnknownDocid):
        index.rows(["nope"])
    index.save(tmp_path / "mv")
    with pytest.raises(DimensionMismatch):
        MultiVectorIndex.load(tmp_path / "mv", dim=64)
    (tmp_path / "mv" / "tokens.npy").write_bytes(b"garbage")
    with pytest.raises(IndexCorrupt, match="rebuild"):
        MultiVectorIndex.load(tmp_path / "mv")


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_code_packing_round_trips(nbits):
    rng = np.random.default_rng(nbits)
    codes = rng.integers(0, 1 << nbits, (17, 32))
    packed = _pack_codes(codes, nbits)
    assert packed.shape == (17, 32 * nbits // 8)
    assert np.array_equal(_unpack_codes(packed, nbits, 32), codes)


def test_plaid_error_shrinks_with_bits_and_exhaustive_search_is_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # MaxSim on the torch reference: the kernel has its own tests
    docids, enc, queries = _corpus(n=150)
    index = MultiVectorIndex.build(docids, enc)
    tokens = np.asarray(index.tokens, np.float32)
    errs = {}
    for nbits in (1, 2, 4):
        plaid = PlaidIndex.build(index, nbits=nbits, ncentroids=16, sample=10_000)
        rebuilt = plaid.decompress(0, index.n_tokens)
        errs[nbits] = float(np.mean(np.sum((rebuilt - tokens) ** 2, axis=1)))
        assert plaid.bytes_per_token() == 32 * nbits / 8 + 4
    assert errs[4] < errs[2] < errs[1] < 0.5
    plaid = PlaidIndex.build(index, nbits=4, ncentroids=16, sample=10_000)
    plaid.save(tmp_path / "plaid")
    plaid = open_index(tmp_path / "plaid")
    # every centroid probed and every document rescored: exact MaxSim over the decompressed tokens
    scores, rows, stats = plaid.search(queries, 10, nprobe=16, candidates=10_000)
    brute = _brute(queries, plaid.decompress(0, index.n_tokens), plaid.offsets)
    for i in range(len(queries)):
        want = np.argsort(-brute[i], kind="stable")[:10]
        assert np.array_equal(rows[i], want)
    assert stats["generated"] == stats["scored"] == len(queries) * len(docids)
    # few candidates: fewer documents scored; centroid interaction keeps far more of the top 10 than chance
    # (30 of 150 documents: 0.2), and more candidates keep more
    overlaps = []
    for c in (30, 90):
        _, rows_small, stats_small = plaid.search(queries, 10, nprobe=2, candidates=c)
        assert stats_small["scored"] <= c * len(queries)
        overlaps.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows_small, rows)]))
    assert overlaps[0] > 0.4 and overlaps[1] > overlaps[0]


def test_fde_closed_forms():
    docids, enc, queries = _corpus(n=20, dim=16)
    off = enc.offsets
    # one partition, no projection: <fde(q), fde(d)> = sum_q q . mean(d), exactly
    cfg = FDEConfig(k_sim=0, d_proj=16, reps=1)
    d = document_fdes(enc.vectors, off, cfg)
    q = query_fdes(queries, cfg)
    want = np.array([[qq.sum(0) @ enc.vectors[off[i]:off[i + 1]].mean(0) for i in range(20)] for qq in queries])
    np.testing.assert_allclose(q @ d.T, want, rtol=1e-4, atol=1e-4)
    # a one-token document: with filling, every partition holds that token
    cfg = FDEConfig(k_sim=3, d_proj=16, reps=2)
    one = document_fdes(enc.vectors[:1], np.array([0, 1]), cfg)
    assert np.allclose(one.reshape(2 * 8, 16), enc.vectors[0])
    nofill = document_fdes(enc.vectors[:1], np.array([0, 1]), FDEConfig(k_sim=3, d_proj=16, reps=2,
                                                                        fill_empty=False))
    assert (np.abs(nofill.reshape(16, 16)).sum(1) > 0).sum() == 2  # one filled partition per repetition


def test_fde_ranking_tracks_maxsim_as_partitions_get_finer():
    docids, enc, queries = _corpus(n=200, dim=32, seed=3)
    brute = _brute(queries, enc.vectors, enc.offsets)
    corr = []
    for cfg in (FDEConfig(k_sim=1, d_proj=8, reps=2), FDEConfig(k_sim=4, d_proj=16, reps=30)):
        est = query_fdes(queries, cfg) @ document_fdes(enc.vectors, enc.offsets, cfg).T
        corr.append(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(est, brute)]))
    assert corr[1] > corr[0] and corr[1] > 0.6


def test_fde_config_refuses_bad_parameters():
    with pytest.raises(BadInput, match="k_sim"):
        FDEConfig(k_sim=13)
    with pytest.raises(BadInput, match="d_proj"):
        FDEConfig(d_proj=0)


def test_plaid_updates_in_place_equal_a_build_with_the_same_codebook(tmp_path, monkeypatch):
    """PLAID takes writes in place with the centroids it has: after every round of removals, replacements and
    appends (crossing the postings' rebuild and the compaction thresholds), its candidates and search equal those
    of an index compressed afresh from the live tokens with the same codebook, and a save writes that index."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # MaxSim on the torch reference: the kernel has its own tests
    docids, enc, queries = _corpus(n=160)
    tokens = MultiVectorIndex.build(docids[:60], _sub(enc, np.arange(60)))
    plaid = PlaidIndex.build(tokens, nbits=2, ncentroids=16, sample=10_000)
    tokens.COMPACT_FRACTION = 1.0  # the token index keeps its tombstones: the two compact at different times
    assert plaid.meta["trained_tokens"] == tokens.n_tokens and not plaid.outgrown()
    rng = np.random.default_rng(5)
    nxt, saw_fresh, saw_dead = 60, False, False
    for step in range(10):
        live = tokens.docids
        gone = rng.choice(live, 3, replace=False).tolist()
        again = [d for d in live if d not in gone][:2]
        new = docids[nxt:nxt + 8]
        nxt += 8
        rows = [int(rng.integers(0, 160)) for _ in again] + [docids.index(d) for d in new]
        sub = _sub(enc, np.array(rows)) if rows else None
        tokens.update(gone, again + new, sub)
        plaid.update(gone, again + new, sub)
        saw_fresh |= plaid._postings_rows < plaid.n_rows
        saw_dead |= plaid.tombstones > 0
        order = sorted(tokens.docids, key=lambda d: tokens.row_of[d])
        fresh = PlaidIndex.build(tokens, codebook=plaid)
        assert len(plaid) == len(fresh) and plaid.docids == fresh.docids == order
        for q in queries:
            got = {plaid.row_docids[r] for r in plaid.candidates(q, 3)}
            assert got == {fresh.docids[r] for r in fresh.candidates(q, 3)}
        for nprobe, cand in ((3, 20), (16, 10_000)):
            s1, r1, _ = plaid.search(queries, 10, nprobe=nprobe, candidates=cand)
            s2, r2, _ = fresh.search(queries, 10, nprobe=nprobe, candidates=cand)
            assert [[plaid.row_docids[r] for r in rr] for rr in r1] == [[fresh.docids[r] for r in rr] for rr in r2]
            np.testing.assert_allclose(np.concatenate(s1), np.concatenate(s2), rtol=1e-6)
        plaid.search(queries[:1], 5)  # builds the postings: later appends are scanned until they pass 1/8
    assert saw_fresh and saw_dead and plaid.tombstones < 10 * 5  # compacted along the way
    back = PlaidIndex.load(plaid.save(tmp_path / "p"))
    assert back.tombstones == 0 and back.docids == plaid.docids
    np.testing.assert_array_equal(np.asarray(back.codes), np.asarray(fresh.codes))
    np.testing.assert_array_equal(np.asarray(back.residuals), np.asarray(fresh.residuals))
    grown = tokens.compacted().n_tokens / plaid.meta["trained_tokens"]  # live tokens over those trained on
    assert grown > 1.5 and plaid.outgrown(grown * 0.99) and not plaid.outgrown(grown * 1.01)
    with pytest.raises(BadInput, match="duplicate"):
        plaid.update([], ["x", "x"], _sub(enc, np.array([0, 1])))


def test_fdes_of_a_few_documents_equal_those_of_a_corpus_pass(monkeypatch):
    """A service write's FDEs (few tokens: partition sums in numpy) equal torch's index_add_ sums of the same
    documents bit for bit, and a whole-corpus derivation's up to float rounding (the projections' matrix products
    block differently), so an FDE index that follows writes ranks like one derived afresh."""
    import rankstack.index.muvera as mu

    docids, enc, _ = _corpus(n=60)
    cfg = FDEConfig()

    def per_document():
        return np.concatenate([document_fdes(_sub(enc, [i]).vectors, np.array([0, enc.lengths[i]]), cfg)
                               for i in range(60)])

    monkeypatch.setattr(mu, "_SMALL_TOKENS", 0)
    big, torch_sums = document_fdes(enc.vectors, enc.offsets, cfg), per_document()
    monkeypatch.setattr(mu, "_SMALL_TOKENS", 1 << 30)
    small = per_document()
    np.testing.assert_array_equal(small, torch_sums)
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-6)
