from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="needs rankstack[cpu]")

from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt, IndexNotFound, UnknownDocid
from rankstack.index.faiss_flat import DenseFlatIndex


def _data(n=257, dim=24, nq=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    return [f"doc-{i}" for i in range(n)], x, q


def _brute(docids, x, q, k):
    s = q @ x.T
    out = []
    for row in s:
        order = sorted(range(len(docids)), key=lambda i: (-row[i], docids[i]))[:k]
        out.append([docids[i] for i in order])
    return out


def test_search_equals_brute_force():
    docids, x, q = _data()
    index = DenseFlatIndex(24)
    index.add(docids, x)
    got = index.docid_pairs(index.search(q, 10))
    assert [[d for d, _ in row] for row in got] == _brute(docids, x, q, 10)
    np.testing.assert_allclose([s for s, in [[p[1]] for p in got[0]]], np.sort(q[0] @ x.T)[::-1][:10], rtol=1e-5)


def test_k_beyond_size_never_leaks_minus_one():
    docids, x, q = _data(n=5)
    index = DenseFlatIndex(24)
    index.add(docids, x)
    topk = index.search(q, 8)
    assert (topk.ids[:, 5:] == -1).all()
    assert all(len(row) == 5 for row in index.docid_pairs(topk))


def test_remove_and_upsert_keep_docids_aligned():
    docids, x, q = _data()
    index = DenseFlatIndex(24)
    index.add(docids, x)
    drop = ["doc-0", "doc-100", "doc-256"]
    index.remove(drop)
    keep = [i for i, d in enumerate(docids) if d not in drop]
    assert len(index) == len(keep)
    got = [[d for d, _ in r] for r in index.docid_pairs(index.search(q, 20))]
    assert got == _brute([docids[i] for i in keep], x[keep], q, 20)
    new = np.ones((1, 24), np.float32) * 10
    index.add(["doc-5"], new, upsert=True)
    np.testing.assert_array_equal(index.reconstruct("doc-5"), new[0])
    with pytest.raises(BadInput, match="already in the index"):
        index.add(["doc-5"], new)
    with pytest.raises(UnknownDocid, match="unknown docids"):
        index.remove(["nope"])


def test_save_load_roundtrip(tmp_path):
    docids, x, q = _data()
    index = DenseFlatIndex(24, meta={"model": "m"})
    index.add(docids, x)
    index.save(tmp_path / "ix")
    back = DenseFlatIndex.load(tmp_path / "ix")
    assert back.meta == {"model": "m"} and back.docids == docids
    assert back.docid_pairs(back.search(q, 5)) == index.docid_pairs(index.search(q, 5))


def test_clear_errors(tmp_path):
    index = DenseFlatIndex(24)
    with pytest.raises(BadInput, match="empty"):
        index.search(np.zeros((1, 24), np.float32), 3)
    docids, x, q = _data()
    with pytest.raises(DimensionMismatch, match="dimension 24 but this index holds 32-d"):
        DenseFlatIndex(32).add(docids, x)
    index.add(docids, x)
    with pytest.raises(DimensionMismatch, match="dimension 23"):
        index.search(q[:, :23], 3)
    with pytest.raises(BadInput, match="k must be a positive integer"):
        index.search(q, 0)
    with pytest.raises(BadInput, match="NaN"):
        index.search(np.full((1, 24), np.nan, np.float32), 3)
    with pytest.raises(IndexNotFound):
        DenseFlatIndex.load(tmp_path / "none")


def test_corrupt_files_are_detected(tmp_path):
    docids, x, _ = _data()
    index = DenseFlatIndex(24)
    index.add(docids, x)
    path = index.save(tmp_path / "ix")
    blob = (path / "faiss.index").read_bytes()
    (path / "faiss.index").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IndexCorrupt, match="unreadable or truncated"):
        DenseFlatIndex.load(path)
    index.save(path)
    (path / "docids.json").write_text('["only-one"]')
    with pytest.raises(IndexCorrupt, match="inconsistent"):
        DenseFlatIndex.load(path)
    (path / "params.json").write_text("{not json")
    with pytest.raises(IndexCorrupt, match="params.json is corrupt"):
        DenseFlatIndex.load(path)


def test_crash_during_save_keeps_the_previous_index(tmp_path, monkeypatch):
    docids, x, _ = _data()
    old = DenseFlatIndex(24)
    old.add(docids[:10], x[:10])
    path = old.save(tmp_path / "ix")
    new = DenseFlatIndex(24)
    new.add(docids, x)
    import rankstack.index.faiss_flat as mod

    def exploding_write_json(p, obj):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "write_json", exploding_write_json)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    assert DenseFlatIndex.load(path).docids == docids[:10]
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]


def test_removals_are_tombstones_until_compaction_and_match_a_fresh_index(tmp_path):
    """Removing rows keeps FAISS's array (tombstones) until they pass the compaction threshold; at every stage
    search equals brute force over the live documents, and a save writes only the live rows."""
    docids, x, q = _data(n=600)
    index = DenseFlatIndex(24)
    index.add(docids, x)
    live = list(range(600))
    rng = np.random.default_rng(1)
    for step in range(6):
        gone = sorted(rng.choice(live, 60, replace=False).tolist())
        index.remove([docids[i] for i in gone])
        live = [i for i in live if i not in set(gone)]
        assert len(index) == len(live) and index.docids == [docids[i] for i in live]
        for k in (1, 10, 700):  # 700: past the live size, never a removed row or -1
            got = [[d for d, _ in r] for r in index.docid_pairs(index.search(q, k))]
            assert got == _brute([docids[i] for i in live], x[live], q, k)
        np.testing.assert_array_equal(index.vectors(), x[live])
        if step == 2:
            assert 0 < index.tombstones <= DenseFlatIndex.COMPACT_MIN  # 180 removed: below the threshold
            back = DenseFlatIndex.load(index.save(tmp_path / "ix"))
            assert back.tombstones == 0 and back.docids == index.docids
            assert back.docid_pairs(back.search(q, 10)) == index.docid_pairs(index.search(q, 10))
    assert index.tombstones < 360  # compacted once it passed 256
    removed = next(d for i, d in enumerate(docids) if i not in set(live))
    index.add([removed], x[:1] * 100)  # a removed docid comes back as a new row
    assert index.docid_pairs(index.search(x[:1], 1))[0][0][0] == removed
    index.compact()
    assert index.tombstones == 0 and len(index) == len(live) + 1


def test_a_save_with_tombstones_writes_the_live_rows_in_chunks(tmp_path):
    """The compacted copy a save writes is filled chunk by chunk straight into FAISS's storage (one copy of the index
    in memory): it must hold exactly the live rows in order, across chunk edges, and with no live row at all."""
    docids, x, q = _data(n=300)
    index = DenseFlatIndex(24)
    index.add(docids, x)
    index.remove(docids[::3])  # 100 tombstones, below the compaction threshold
    assert index.tombstones == 100
    live = [i for i in range(300) if i % 3]
    comp = index._compacted(chunk=7)
    np.testing.assert_array_equal(comp.reconstruct_n(0, comp.ntotal), x[live])
    back = DenseFlatIndex.load(index.save(tmp_path / "ix"))
    assert back.docids == [docids[i] for i in live] and back.tombstones == 0
    np.testing.assert_array_equal(back.vectors(), x[live])
    assert [[d for d, _ in r] for r in back.docid_pairs(back.search(q, 10))] == _brute(
        [docids[i] for i in live], x[live], q, 10)
    v = back.vectors()  # a copy, not a view of FAISS's storage
    v[:] = 0
    np.testing.assert_array_equal(back.vectors(), x[live])
    small = DenseFlatIndex(24)
    small.add(docids[:5], x[:5])
    small.remove(docids[:5])
    assert small.tombstones == 5
    empty = DenseFlatIndex.load(small.save(tmp_path / "empty"))
    assert len(empty) == 0 and empty.vectors().shape == (0, 24)
