"""The sparse impact index under a stream of writes: rows appended into growable buffers, tombstones, the search
matrix kept as a transposed base plus the rows written since (rebuilt past an eighth of the base, and after a
compaction). After every write, search equals brute force over the live documents, and the document frequencies
equal a fresh index's."""

from __future__ import annotations

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from rankstack.index.sparse import SparseIndex  # noqa: E402

VOCAB = [f"t{i}" for i in range(300)]


def vectors(rng, n):
    w = sp.random(n, len(VOCAB), density=0.04, format="csr", random_state=rng, dtype=np.float32)
    w.data = np.round(w.data * 3, 2) + 0.01
    t = w.copy()
    t.data[:] = 1
    return w, t


def brute(index, q, k):
    """Independent exact top-k: dense integer products over the live rows, ties by docid (read without compacting,
    which would reset the search matrix this test follows)."""
    rows = np.array([i for i, d in enumerate(index._rows) if d is not None])
    live = [index._rows[i] for i in rows]
    d = index._impacts.toarray()[rows].astype(np.int64)
    scores = q.toarray().astype(np.int64) @ d.T
    out = []
    for row in scores:
        order = sorted((i for i in range(len(live)) if row[i] > 0), key=lambda i: (-row[i], live[i]))[:k]
        out.append([(live[i], float(row[i])) for i in order])
    return out


def same(got, want):
    """Equal scores, and equal documents above each list's lowest score (ties at the cut may differ)."""
    for g, w in zip(got, want, strict=True):
        assert [x for _, x in g] == [x for _, x in w]
        cut = g[-1][1] if g else 0
        assert {p for p in g if p[1] > cut} == {p for p in w if p[1] > cut}


def test_a_stream_of_writes_searches_like_brute_force():
    rng = np.random.default_rng(7)
    index = SparseIndex(VOCAB, fingerprint="test")
    w, t = vectors(rng, 200)
    index.add([f"d{i}" for i in range(200)], w, t)
    q = index.quantize_queries(vectors(rng, 6)[0])
    index.signature()  # from here on each write keeps it current instead of it being computed afresh
    v0, touched = index.version, set()
    nxt, bases = 200, []
    for step in range(30):
        n_new = int(rng.integers(1, 100))
        w, t = vectors(rng, n_new)
        again = rng.choice(index.docids, 3, replace=False).tolist()  # upserted with new vectors
        ids = again + [f"d{nxt + i}" for i in range(n_new - 3)] if n_new > 3 else again[:n_new]
        nxt += n_new
        index.add(ids, w, t, upsert=True)
        touched |= set(ids)
        if step % 3 == 0:
            gone = rng.choice(index.docids, 5, replace=False).tolist()
            index.remove(gone)
            touched |= set(gone)
        for k in (10, 5000):
            same(index.docid_pairs(index.search(q, k)), brute(index, q, k))
        bases.append(index._search_cache[1])  # the rows the transposed base covers
    assert bases[0] < 300 and len(set(bases)) >= 2, bases  # appended rows passed the base's threshold (1024) once
    assert index.tombstones > 0
    fresh = SparseIndex(VOCAB, fingerprint="test")
    fresh.add(index.docids, index.impacts().astype(np.float32) / index.scale, index._tokens)
    assert np.array_equal(fresh.document_frequencies, index.document_frequencies)
    # the signature kept up by the writes equals one computed afresh over the same documents in another order, and
    # the journal names every docid written
    shuffled = SparseIndex(VOCAB, fingerprint="test")
    order = rng.permutation(len(index))
    shuffled.add([index.docids[i] for i in order], fresh.impacts()[order].astype(np.float32) / index.scale)
    assert shuffled.signature() == index.signature()
    shuffled.add([index.docids[0]], vectors(rng, 1)[0], upsert=True)
    assert shuffled.signature() != index.signature()
    assert index.changed_since(v0) == touched and index.changed_since(index.version) == set()
    # a compaction (a quarter of the rows removed) renumbers rows: the cached search matrix must follow
    index.remove(index.docids[::3])
    same(index.docid_pairs(index.search(q, 50)), brute(index, q, 50))
