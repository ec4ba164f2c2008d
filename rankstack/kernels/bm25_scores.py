"""Pyserini's reported BM25 scores: Lucene's float32 scores rounded to 1e-4 and each tie lowered by 1e-6, in rank
order (what Anserini's searcher does to Lucene's top k). :func:`lowered_scores` is compiled (numba,
``rankstack[fastscan]``) beside its numpy version and :func:`tiebreak_reference`, the plain loop both are tested
against; the BM25 matrix engine (:mod:`rankstack.index.bm25_matrix`) and sharded BM25 report their scores through it.
Beside them, the engine's selection steps over score arrays: Lucene's top-k cut (:func:`lucene_cut`) and a block of
queries' top k in Anserini's order (:func:`block_topk`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["tiebreak", "tiebreak_reference", "lowered_scores", "lowered_scores_numpy", "lucene_cut", "block_topk"]


def tiebreak(pairs: list[tuple[str, np.float32]]) -> list[tuple[str, float]]:
    """The scores Pyserini's searcher reports for Lucene's top k: Anserini orders hits by score, ties by docid
    (lexicographic), rounds each score to 1e-4 (in double) and lowers a score within 1e-4 of the previous (already
    lowered) one by 1e-6 per tie, in float32, so that the scores sort in rank order. Matched against Pyserini's
    runs on every SciFact and NFCorpus test query (tests/index/test_bm25_matrix.py)."""
    if not pairs:
        return []
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i][1], pairs[i][0]))
    raw = np.array([pairs[i][1] for i in order], dtype=np.float32)
    return list(zip([pairs[i][0] for i in order], lowered_scores(raw).tolist()))


def tiebreak_reference(pairs: list[tuple[str, np.float32]]) -> list[tuple[str, float]]:
    """:func:`tiebreak` as one plain loop over the ranks (the specification the vectorised version is tested
    against)."""
    f32 = np.float32
    if not pairs:
        return []
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i][1], pairs[i][0]))
    raw = np.array([pairs[i][1] for i in order], dtype=np.float32)
    rounded = (np.floor(raw.astype(np.float64) * 1e4 + 0.5) / 1e4).astype(np.float32).tolist()
    lim = float(f32(1e-4))
    out, dup, prev = [], 0, 0.0
    for i, cur in zip(order, rounded):
        # float32 values in Python floats: a difference of two nearby float32 values is exact (Sterbenz), so the
        # comparison matches Java's float arithmetic; only a tie needs a float32 operation
        if prev == 0.0 or prev - cur > lim:
            dup = 0
        else:
            dup += 1
            cur = float(f32(f32(cur) - f32(f32(1e-6) * f32(dup))))
        out.append((pairs[i][0], cur))
        prev = cur
    return out


_LIM = float(np.float32(1e-4))
_STEP = np.float32(1e-6)


def _lower(value: float, dup: int) -> float:
    return float(np.float32(np.float32(value) - np.float32(_STEP * np.float32(dup))))


@lru_cache(maxsize=1)
def _lowering_kernel():
    """:func:`tiebreak_reference`'s loop compiled (numba, ``rankstack[fastscan]``), over each row's first
    ``lengths[row]`` entries only, without the GIL: a block's lowering then costs a fraction of a millisecond and
    lets the threads of a batched search run side by side (the numpy version below spends most of its time on
    padding and holds the GIL in its loop over undecided ties). None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def lower(raw, lengths, out):  # float32 [rows, n], int64 [rows], float64 [rows, n]
        lim = np.float64(np.float32(1e-4))
        step = np.float32(1e-6)
        for q in range(raw.shape[0]):
            prev = 0.0
            dup = 0
            for i in range(lengths[q]):
                cur = np.float64(np.float32(np.floor(np.float64(raw[q, i]) * 1e4 + 0.5) / 1e4))
                if prev == 0.0 or prev - cur > lim:
                    dup = 0
                else:
                    dup += 1
                    cur = np.float64(np.float32(np.float32(cur) - np.float32(step * np.float32(dup))))
                out[q, i] = cur
                prev = cur

    return lower


def lowered_scores(raw: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """Pyserini's reported scores for float32 ``raw`` scores already in rank order (see :func:`tiebreak`). A 2-d
    ``raw`` is a block of queries, one per row (each row judged alone), of which only the first ``lengths[row]``
    entries count (the others are returned as 0). Compiled when numba is installed, else
    :func:`lowered_scores_numpy`."""
    kernel = _lowering_kernel()
    if kernel is None:
        return lowered_scores_numpy(raw, lengths)
    r2 = np.ascontiguousarray(np.atleast_2d(raw), dtype=np.float32)
    rows, n = r2.shape
    lens = np.full(rows, n, np.int64) if lengths is None else np.minimum(np.asarray(lengths, np.int64), n)
    out = np.zeros((rows, n))
    kernel(r2, lens, out)
    return out[0] if raw.ndim == 1 else out


def lowered_scores_numpy(raw: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """:func:`lowered_scores` vectorised in numpy: equal rounded scores are ties and steps of two or more 1e-4
    reset the tie count whatever it is, so only the rare single-step transitions after a tie are decided one by
    one."""
    flat = raw.ndim == 1
    r2 = np.atleast_2d(raw)
    r = (np.floor(r2.astype(np.float64) * 1e4 + 0.5) / 1e4).astype(np.float32)
    rows, n = r.shape
    if n == 0:
        return r.astype(np.float64).reshape(raw.shape)
    rd = r.astype(np.float64)
    diff = np.full((rows, n), np.inf)
    diff[:, 1:] = rd[:, :-1] - rd[:, 1:]
    reset = diff > 1.9e-4  # prev - cur >= 2e-4 - dup * 1e-6 > 1e-4 while dup < 90 (checked below)
    zero_prev = np.zeros((rows, n), dtype=bool)
    zero_prev[:, 1:] = rd[:, :-1] == 0.0  # Anserini restarts after a (lowered) score of 0
    col = np.broadcast_to(np.arange(n), (rows, n))
    if lengths is not None:
        reset |= col >= np.asarray(lengths)[:, None]  # padding: never a tie, never looked at
    open_ = ~reset & ((diff > 0) | zero_prev)  # a tie only if the previous one was lowered
    # after a certain reset the previous score is not lowered: decided here, all at once
    after_reset = np.zeros((rows, n), dtype=bool)
    after_reset[:, 1:] = reset[:, :-1] & ~open_[:, :-1]
    direct = open_ & after_reset
    if direct.any():
        prev = np.zeros((rows, n))
        prev[:, 1:] = rd[:, :-1]
        reset = reset | (direct & ((prev == 0.0) | (prev - rd > _LIM)))
        open_ &= ~direct
    undecided = np.argwhere(open_)
    if undecided.size:
        last_definite = np.maximum.accumulate(np.where(reset, col, 0), axis=1)
        reset = reset.copy()
        last_decided = {}  # per row: the last undecided position found to reset
        for q, i in undecided.tolist():  # row by row, left to right
            start = max(int(last_definite[q, i - 1]), last_decided.get(q, -1))
            dup_prev = (i - 1) - start
            prev = _lower(rd[q, i - 1], dup_prev) if dup_prev else float(rd[q, i - 1])
            if prev == 0.0 or prev - rd[q, i] > _LIM:
                reset[q, i] = True
                last_decided[q] = i
    dup = col - np.maximum.accumulate(np.where(reset, col, 0), axis=1)
    out = rd.copy()
    tied = dup > 0
    out[tied] = (r[tied] - (_STEP * dup[tied].astype(np.float32))).astype(np.float32)
    for q in np.flatnonzero(dup.max(axis=1) >= 90).tolist():  # beyond the shortcut's assumption: the plain loop
        out[q] = [v for _, v in tiebreak_reference([(str(i).zfill(12), v) for i, v in enumerate(r2[q])])]
    if lengths is not None:
        out[col >= np.asarray(lengths)[:, None]] = 0.0
    return out[0] if flat else out


def lucene_cut(idx: np.ndarray, sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The documents of Lucene's top ``k`` of one row (unordered): the double sums rounded to float32; at the
    cut, ties go to the earlier document."""
    scores = sums.astype(np.float32)
    if idx.size > k:
        kth = np.partition(scores, idx.size - k)[idx.size - k]
        keep = scores > kth
        tied = np.flatnonzero(scores == kth)
        need = k - int(np.count_nonzero(keep))
        if need < tied.size:
            tied = tied[np.argpartition(idx[tied], need - 1)[:need]] if need else tied[:0]
        keep[tied] = True
        idx, scores = idx[keep], scores[keep]
    return idx, scores


def block_topk(sums: np.ndarray, k: int, rank: np.ndarray, by_rank: np.ndarray
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pyserini's top ``k`` (rows, reported scores) of each row of ``sums`` (a block of queries' float64 score sums
    over ``n`` documents; ``rank``/``by_rank``: each row's place in docid order and back), without a Python step per
    document: a float32
    score's bits order like the score (scores are >= 0), so ``bits << 32 | (n - 1 - row)`` orders documents by
    score, then earlier row first (Lucene's cut), and ``bits << 32 | (n - 1 - docid rank)`` as Anserini
    orders them; the rows and scores are read back from the sorted keys."""
    n = sums.shape[1]
    key = sums.astype(np.float32).view(np.int32).astype(np.int64)
    np.left_shift(key, 32, out=key)
    np.bitwise_or(key, np.arange(n - 1, -1, -1, dtype=np.int64), out=key)
    kk = min(k, n)
    top = np.argpartition(key, n - kk, axis=1)[:, n - kk:]
    high = np.take_along_axis(key, top, 1) & ~np.int64(0xFFFFFFFF)  # the score bits; 0: no query term
    final = np.sort(high | (n - 1 - rank[top]), axis=1)[:, ::-1]
    counts = np.count_nonzero(final >> 32, axis=1)
    scores = (final >> 32).astype(np.int32).view(np.float32)
    rows = by_rank[n - 1 - (final & 0xFFFFFFFF)]
    reported = lowered_scores(scores, counts)
    return [(rows[i, :c], reported[i, :c]) for i, c in enumerate(counts.tolist())]
