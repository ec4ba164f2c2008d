"""Triton kernels: Hamming scan + top-k, PQ asymmetric-distance scan + top-k, candidate rescoring.

Each program scores one query against a block of ``BLOCK_N`` rows, sorts packed ``(key << 32 | row)`` int64 values
on chip and writes only its best ``K``; a final top-k over the ``num_blocks * K`` survivors (in PyTorch) gives the
answer. The packing makes ties break by ascending row, exactly as the references in :mod:`.reference` do.

Import this module only through :mod:`rankstack.kernels`, which checks that Triton is installed. Under
``TRITON_INTERPRET=1`` the kernels run on CPU tensors (how CI tests them); the variable must be set before import.
"""

from __future__ import annotations

import triton
import triton.language as tl

INT64_MAX = 9223372036854775807


@triton.jit
def _popcount32(x):
    # x: uint32. Plain bit tricks: the interpreter has no libdevice popc and no inline asm.
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    return (x & 0x3F).to(tl.int32)


@triton.jit
def _store_best(key, row_ok, out_ptr, qi, bi, num_blocks, K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Sort this block's packed keys on chip and write its best K to ``out[qi, bi, :]`` (padding rows last)."""
    key = tl.where(row_ok, key, INT64_MAX)
    key = tl.sort(key)
    r = tl.arange(0, BLOCK_N)
    tl.store(out_ptr + (qi.to(tl.int64) * num_blocks + bi) * K + r, key, mask=r < K)


@triton.jit
def hamming_topk_kernel(q_ptr, codes_ptr, out_ptr, N, num_blocks,
                        W: tl.constexpr, WP: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr):
    """q: int32 words [Q, W]; codes: int32 words [N, W]; out: int64 keys [Q, num_blocks, K]."""
    qi = tl.program_id(0)
    bi = tl.program_id(1)
    rows = bi * BLOCK_N + tl.arange(0, BLOCK_N)
    words = tl.arange(0, WP)
    row_ok = rows < N
    word_ok = words < W
    q = tl.load(q_ptr + qi * W + words, mask=word_ok, other=0).to(tl.uint32, bitcast=True)
    c = tl.load(codes_ptr + rows[:, None].to(tl.int64) * W + words[None, :],
                mask=row_ok[:, None] & word_ok[None, :], other=0).to(tl.uint32, bitcast=True)
    dist = tl.sum(_popcount32(c ^ q[None, :]), axis=1)
    key = (dist.to(tl.int64) << 32) | rows.to(tl.int64)
    _store_best(key, row_ok, out_ptr, qi, bi, num_blocks, K, BLOCK_N)


@triton.jit
def pq_adc_topk_kernel(lut_ptr, codes_ptr, out_ptr, N, num_blocks,
                       M: tl.constexpr, KS: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr,
                       LARGEST: tl.constexpr):
    """lut: float32 [Q, M, KS]; codes: uint8 [N, M]; out: int64 keys [Q, num_blocks, K].

    The query's table (M x 256 floats, 48 KiB at M=48) is read by gathers that stay in L1/L2 for the whole
    block: Triton has no explicit shared-memory gather, so "on chip" means cache-resident, not registers.
    """
    qi = tl.program_id(0)
    bi = tl.program_id(1)
    rows = bi * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    lut = lut_ptr + qi.to(tl.int64) * M * KS
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m in range(M):  # ascending m, the same summation order as the reference: bit-exact
        c = tl.load(codes_ptr + rows.to(tl.int64) * M + m, mask=row_ok, other=0).to(tl.int32)
        acc = acc + tl.load(lut + m * KS + c, mask=row_ok, other=0.0)
    b = acc.to(tl.int32, bitcast=True)
    ordered = b ^ ((b >> 31) & 0x7FFFFFFF)
    if LARGEST:
        ordered = ~ordered
    key = (ordered.to(tl.int64) << 32) | rows.to(tl.int64)
    _store_best(key, row_ok, out_ptr, qi, bi, num_blocks, K, BLOCK_N)


@triton.jit
def rescore_kernel(q_ptr, vec_ptr, ids_ptr, scale_ptr, out_ptr, C, D,
                   BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, SCALED: tl.constexpr):
    """q: float32 [Q, D]; vec: float16/float32/int8 [N, D]; ids: int64 [Q, C] (-1 = none); scale: float32 [N]
    (int8 rows, when SCALED); out: float32 [Q, C]."""
    qi = tl.program_id(0)
    ci = tl.program_id(1)
    cols = ci * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    ids = tl.load(ids_ptr + qi.to(tl.int64) * C + cols, mask=col_ok, other=-1)
    valid = col_ok & (ids >= 0)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        q = tl.load(q_ptr + qi.to(tl.int64) * D + d, mask=d_ok, other=0.0).to(tl.float32)
        v = tl.load(vec_ptr + ids[:, None] * D + d[None, :], mask=valid[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(v.to(tl.float32) * q[None, :], axis=1)
    if SCALED:
        acc = acc * tl.load(scale_ptr + ids, mask=valid, other=1.0)
    acc = tl.where(valid, acc, float("-inf"))
    tl.store(out_ptr + qi.to(tl.int64) * C + cols, acc, mask=col_ok)


# ---- int4 group-wise weight-only matmul (the reranker LLM's compressed linear layers) ------------------------

@triton.jit
def _int4_tile(packed_ptr, scales_ptr, zeros_ptr, n_offs, k0, k_offs, N, K, n_groups, G: tl.constexpr):
    """Dequantized weight tile ``[BLOCK_N, BLOCK_K]`` (float32) of a ``[N, K]`` matrix stored as two 4-bit codes
    per byte (even k in the low nibble) with an fp16 scale and zero point per ``G`` columns; the tile lies inside
    one group (BLOCK_K divides G)."""
    n_ok = n_offs < N
    k_ok = k_offs < K
    byte = tl.load(packed_ptr + n_offs[:, None].to(tl.int64) * (K // 2) + (k_offs[None, :] // 2),
                   mask=n_ok[:, None] & k_ok[None, :], other=0).to(tl.int32)
    q = (byte >> ((k_offs[None, :] % 2) * 4)) & 0xF
    g = k0 // G
    s = tl.load(scales_ptr + n_offs.to(tl.int64) * n_groups + g, mask=n_ok, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + n_offs.to(tl.int64) * n_groups + g, mask=n_ok, other=0.0).to(tl.float32)
    return (q.to(tl.float32) - z[:, None]) * s[:, None]


@triton.jit
def int4_gemm_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, y_ptr, M, N, K, n_groups,
                     G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``y[M, N] = x[M, K] @ W[N, K]^T`` with W dequantized tile by tile in registers (prefill: many rows)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m_offs[:, None].to(tl.int64) * K + k_offs[None, :],
                    mask=(m_offs[:, None] < M) & (k_offs[None, :] < K), other=0.0).to(tl.float32)
        w = _int4_tile(packed_ptr, scales_ptr, zeros_ptr, n_offs, k0, k_offs, N, K, n_groups, G)
        acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    tl.store(y_ptr + m_offs[:, None].to(tl.int64) * N + n_offs[None, :], acc,
             mask=(m_offs[:, None] < M) & (n_offs[None, :] < N))


@triton.jit
def int4_gemv_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, y_ptr, N, K, n_groups,
                     G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One row of ``x`` (decoding): ``y[r, N] = x[r, K] @ W^T``, each program a block of outputs, reduced in
    registers without a tensor-core tile."""
    r = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + r.to(tl.int64) * K + k_offs, mask=k_offs < K, other=0.0).to(tl.float32)
        w = _int4_tile(packed_ptr, scales_ptr, zeros_ptr, n_offs, k0, k_offs, N, K, n_groups, G)
        acc += tl.sum(w * x[None, :], axis=1)
    tl.store(y_ptr + r.to(tl.int64) * N + n_offs, acc, mask=n_offs < N)


# ---- fused ICR attention rows -----------------------------------------------------------------------------------

@triton.jit
def _scores(q, k_ptr, kvh, l_offs, L, qpos, scale, window, D: tl.constexpr):
    """Masked logits ``[BLOCK_R, BLOCK_L]`` of the rows ``q`` against keys ``l_offs`` of kv head ``kvh``."""
    d = tl.arange(0, D)
    k = tl.load(k_ptr + (kvh.to(tl.int64) * L + l_offs[:, None]) * D + d[None, :], mask=l_offs[:, None] < L,
                other=0.0).to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    ok = (l_offs[None, :] < L) & (l_offs[None, :] <= qpos[:, None])
    if window > 0:
        ok = ok & (qpos[:, None] - l_offs[None, :] < window)
    return tl.where(ok, s, float("-inf"))


@triton.jit
def attention_rows_kernel(q_ptr, k_ptr, qpos_ptr, out_ptr, R, L, group, scale, window,
                          D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """For head ``h``: ``out[h, j] = mean_r softmax_j(q[h, r] . k[h // group, j] * scale)`` over causal (and
    windowed) keys, by an online softmax over key blocks (pass 1: row max and normaliser) and a second sweep that
    sums the normalised probabilities over the rows (pass 2). The ``R x L`` matrix is never stored."""
    h = tl.program_id(0)
    kvh = h // group
    r = tl.arange(0, BLOCK_R)
    d = tl.arange(0, D)
    r_ok = r < R
    q = tl.load(q_ptr + (h.to(tl.int64) * R + r[:, None]) * D + d[None, :], mask=r_ok[:, None], other=0.0
                ).to(tl.float32)
    qpos = tl.load(qpos_ptr + r, mask=r_ok, other=0)
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    den = tl.zeros([BLOCK_R], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        s = _scores(q, k_ptr, kvh, l0 + tl.arange(0, BLOCK_L), L, qpos, scale, window, D)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        den = den * tl.exp(m - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        m = m_new
    m = tl.where(m == float("-inf"), 0.0, m)
    inv = tl.where(r_ok & (den > 0), 1.0 / den, 0.0) / R
    for l0 in range(0, L, BLOCK_L):
        l_offs = l0 + tl.arange(0, BLOCK_L)
        s = _scores(q, k_ptr, kvh, l_offs, L, qpos, scale, window, D)
        p = tl.exp(s - m[:, None]) * inv[:, None]
        tl.store(out_ptr + h.to(tl.int64) * L + l_offs, tl.sum(p, axis=0), mask=l_offs < L)


# ---- late interaction (MaxSim) ----------------------------------------------------------------------------------

@triton.jit
def maxsim_kernel(q_ptr, w_ptr, tok_ptr, off_ptr, rows_ptr, out_ptr, C, LQ, D,
                  BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (query ``b``, candidate ``c``): ``out[b, c] = sum_i w[b, i] * max_j <q[b, i], tok[j]>`` over
    the candidate's token span, sweeping it in blocks of ``BLOCK_T`` tokens with a running maximum per query row
    (the ``LQ x tokens`` matrix is never stored). ``-inf`` for a ``-1`` row or an empty span."""
    bi = tl.program_id(0)
    ci = tl.program_id(1)
    row = tl.load(rows_ptr + bi.to(tl.int64) * C + ci)
    start = tl.load(off_ptr + tl.maximum(row, 0))
    end = tl.load(off_ptr + tl.maximum(row, 0) + 1)
    end = tl.where(row >= 0, end, start)
    qi = tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_ok = qi < LQ
    q = tl.load(q_ptr + (bi.to(tl.int64) * LQ + qi[:, None]) * D + d[None, :],
                mask=q_ok[:, None] & (d[None, :] < D), other=0.0).to(tl.float32)
    w = tl.load(w_ptr + bi.to(tl.int64) * LQ + qi, mask=q_ok, other=0.0).to(tl.float32)
    best = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < end
        tok = tl.load(tok_ptr + t[:, None].to(tl.int64) * D + d[None, :], mask=t_ok[:, None] & (d[None, :] < D),
                      other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(tok), input_precision="ieee")
        s = tl.where(t_ok[None, :], s, float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=1))
    live = w != 0.0
    score = tl.sum(tl.where(live, w * tl.where(live, best, 0.0), 0.0), axis=0)
    score = tl.where(end > start, score, float("-inf"))
    tl.store(out_ptr + bi.to(tl.int64) * C + ci, score)
