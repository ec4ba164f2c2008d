"""GPU kernels for compressed-index search, late interaction and compressed LLM layers, each beside its PyTorch reference.

``hamming_topk``, ``pq_adc_topk`` and ``rescore`` take torch tensors. CUDA tensors (or any tensors when
``TRITON_INTERPRET=1``) run the Triton kernels; other CPU tensors run the reference in :mod:`.reference`. The
indexes in :mod:`rankstack.index` call these only for GPU tensors; on CPU they dispatch to FAISS where FAISS has the
operation (``IndexBinaryFlat``, ``IndexPQ``), which is faster than either path here.
"""

from __future__ import annotations

import os

import torch

from rankstack.errors import BadInput
from rankstack.kernels.reference import (attention_rows_ref, maxsim_ref, float_order_key, hamming_topk_ref, int4_matmul_ref,
                                         key_to_float,
                                         pq_adc_topk_ref, rescore_ref, topk_by_score, unpack_keys)

__all__ = ["hamming_topk", "pq_adc_topk", "rescore", "int4_matmul", "int4_matmul_ref", "attention_rows",
           "attention_rows_ref", "maxsim", "maxsim_ref", "hamming_topk_ref", "pq_adc_topk_ref", "rescore_ref",
           "use_triton", "float_order_key", "key_to_float", "topk_by_score"]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """True when ``t`` should go through a Triton kernel: it is on a GPU, or the interpreter is on."""
    return t.is_cuda or interpreting()


def _kernels():
    from rankstack._optional import require

    require("triton")
    from rankstack.kernels import triton_kernels

    return triton_kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")


def _block(k: int, block_n: int) -> int:
    return max(_pow2(block_n), _pow2(k))


def hamming_topk(queries: torch.Tensor, codes: torch.Tensor, k: int, *, block_n: int = 1024,
                 triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hamming top-``k`` of packed uint8 ``queries [Q, B]`` over ``codes [N, B]``: ``(int32 dist, int64 rows)``.

    Best first, ties by ascending row; rows past ``N`` are ``-1`` with distance ``-1``.
    """
    _check_k(k)
    if queries.dtype != torch.uint8 or codes.dtype != torch.uint8:
        raise BadInput(f"packed codes must be uint8, got {queries.dtype} and {codes.dtype}")
    if queries.ndim != 2 or codes.ndim != 2 or queries.shape[1] != codes.shape[1]:
        raise BadInput(f"code sizes differ: queries {tuple(queries.shape)}, codes {tuple(codes.shape)}")
    if not (use_triton(codes) if triton is None else triton):
        return hamming_topk_ref(queries, codes, k)
    tk = _kernels()
    nb = codes.shape[1]
    pad = (-nb) % 4  # view as int32 words; zero padding on both sides adds no distance
    if pad:
        queries = torch.nn.functional.pad(queries, (0, pad))
        codes = torch.nn.functional.pad(codes, (0, pad))
    qw = queries.contiguous().view(torch.int32)
    cw = codes.contiguous().view(torch.int32)
    n, w = cw.shape
    bn = _block(k, block_n)
    kk = min(k, bn)
    nblocks = max(1, _cdiv(n, bn))
    out = torch.full((qw.shape[0], nblocks, kk), -7, dtype=torch.int64, device=codes.device)  # poisoned
    tk.hamming_topk_kernel[(qw.shape[0], nblocks)](qw, cw, out, n, nblocks, W=w, WP=_pow2(w), K=kk, BLOCK_N=bn)
    return _finish(out.view(qw.shape[0], -1), k)


def _finish(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if keys.shape[1] < k:
        pad = torch.full((keys.shape[0], k - keys.shape[1]), torch.iinfo(torch.int64).max, dtype=torch.int64,
                         device=keys.device)
        keys = torch.cat([keys, pad], dim=1)
    return unpack_keys(keys, k)


def pq_adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int, *, largest: bool = True, block_n: int = 1024,
                triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PQ asymmetric-distance top-``k``: ``lut`` float32 ``[Q, M, 256]``, ``codes`` uint8 ``[N, M]``.

    Returns ``(scores float32 [Q, k], rows int64 [Q, k])`` best first, ties by ascending row. The scores are the
    kernel's own sums, decoded from its sort keys (``NaN`` past ``N``).
    """
    _check_k(k)
    if lut.ndim != 3 or codes.ndim != 2 or lut.shape[1] != codes.shape[1]:
        raise BadInput(f"lookup table {tuple(lut.shape)} does not match codes {tuple(codes.shape)} "
                       f"(expected [Q, M, 256] and [N, M])")
    if codes.dtype != torch.uint8:
        raise BadInput(f"PQ codes must be uint8 (8-bit sub-quantizers), got {codes.dtype}")
    lut = lut.to(torch.float32).contiguous()
    if not (use_triton(codes) if triton is None else triton):
        return pq_adc_topk_ref(lut, codes, k, largest=largest)
    tk = _kernels()
    q, m, ks = lut.shape
    n = codes.shape[0]
    bn = _block(k, block_n)
    kk = min(k, bn)
    nblocks = max(1, _cdiv(n, bn))
    out = torch.full((q, nblocks, kk), -7, dtype=torch.int64, device=codes.device)
    tk.pq_adc_topk_kernel[(q, nblocks)](lut, codes.contiguous(), out, n, nblocks, M=m, KS=ks, K=kk, BLOCK_N=bn,
                                        LARGEST=largest)
    hi, rows = _finish(out.view(q, -1), k)
    scores = key_to_float(hi, largest)
    return torch.where(rows >= 0, scores, torch.full_like(scores, float("nan"))), rows


def rescore(queries: torch.Tensor, vectors: torch.Tensor, ids: torch.Tensor, *, scales: torch.Tensor | None = None,
            block_c: int = 64, block_d: int = 128, triton: bool | None = None) -> torch.Tensor:
    """Exact inner products ``[Q, C]`` of float queries with the candidate rows ``ids`` of ``vectors`` (float32,
    float16, or int8 with per-row float32 ``scales``); ``-1`` ids score ``-inf``."""
    if queries.ndim != 2 or vectors.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise BadInput(f"query dimension {tuple(queries.shape)} does not match vectors {tuple(vectors.shape)}")
    if ids.ndim != 2 or ids.shape[0] != queries.shape[0]:
        raise BadInput(f"ids must be [num_queries, C], got {tuple(ids.shape)} for {queries.shape[0]} queries")
    if ids.numel() and int(ids.max()) >= vectors.shape[0]:
        raise BadInput(f"candidate row {int(ids.max())} is out of range for {vectors.shape[0]} vectors")
    if scales is not None and (scales.ndim != 1 or scales.shape[0] != vectors.shape[0]):
        raise BadInput(f"scales must be [N] = [{vectors.shape[0]}], got {tuple(scales.shape)}")
    if not (use_triton(vectors) if triton is None else triton):
        return rescore_ref(queries, vectors, ids, scales)
    tk = _kernels()
    q, d = queries.shape
    c = ids.shape[1]
    out = torch.full((q, c), float("nan"), dtype=torch.float32, device=vectors.device)  # poisoned
    grid = (q, max(1, _cdiv(c, block_c)))
    sc = scales.to(torch.float32).contiguous() if scales is not None else out  # a dummy pointer when unused
    tk.rescore_kernel[grid](queries.to(torch.float32).contiguous(), vectors.contiguous(),
                            ids.to(torch.int64).contiguous(), sc, out, c, d, BLOCK_C=block_c, BLOCK_D=block_d,
                            SCALED=scales is not None)
    return out


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int, *,
                block_m: int = 32, block_n: int = 64, triton: bool | None = None) -> torch.Tensor:
    """``x [..., K] @ W^T`` for an int4 group-wise weight ``W [N, K]`` (``packed`` uint8 ``[N, K/2]``, fp16
    ``scales``/``zeros`` ``[N, K/group]``, as :func:`rankstack.kernels.int4.quantize_int4` stores it) without
    materialising ``W``: a GEMV kernel for one row (decoding), a GEMM kernel for more (prefill). float32 result in
    ``x``'s dtype."""
    if packed.dtype != torch.uint8 or packed.ndim != 2:
        raise BadInput(f"packed int4 codes must be a uint8 matrix [N, K/2], got {packed.dtype} {tuple(packed.shape)}")
    n, k = packed.shape[0], packed.shape[1] * 2
    if x.shape[-1] != k:
        raise BadInput(f"input dimension {x.shape[-1]} does not match the weight's {k}")
    if k % group or scales.shape != (n, k // group) or zeros.shape != scales.shape:
        raise BadInput(f"scales/zeros must be [N, K/group] = [{n}, {k // group if k % group == 0 else '?'}] for group "
                       f"{group}, got {tuple(scales.shape)} and {tuple(zeros.shape)}")
    shape = x.shape
    x2 = x.reshape(-1, k)
    if not (use_triton(packed) if triton is None else triton):
        return int4_matmul_ref(x2, packed, scales, zeros, group).reshape(*shape[:-1], n)
    tk = _kernels()
    m = x2.shape[0]
    bk = min(group, 64)
    xc = x2.to(torch.float32).contiguous()
    y = torch.full((m, n), float("nan"), dtype=torch.float32, device=x.device)  # poisoned: every entry is written
    args = (packed.contiguous(), scales.contiguous(), zeros.contiguous(), y)
    if m == 1:
        tk.int4_gemv_kernel[(1, _cdiv(n, block_n))](xc, *args, n, k, k // group, G=group, BLOCK_N=block_n,
                                                     BLOCK_K=bk)
    else:
        bm = max(16, min(block_m, _pow2(m)))
        tk.int4_gemm_kernel[(_cdiv(m, bm), _cdiv(n, block_n))](xc, *args, m, n, k, k // group, G=group,
                                                                BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=bk)
    return y.to(x.dtype).reshape(*shape[:-1], n)


def attention_rows(q: torch.Tensor, k: torch.Tensor, qpos: torch.Tensor, scale: float, *, window: int | None = None,
                   softcap: float | None = None, mask: torch.Tensor | None = None, block_l: int = 64,
                   triton: bool | None = None) -> torch.Tensor:
    """ICR's attention rows: ``[H, L]`` float32, the softmax attention each head pays from the query rows ``q [H, R,
    D]`` (at absolute positions ``qpos [R]``) to every key ``k [Hkv, L, D]``, averaged over the rows; causal, and
    limited to the last ``window`` positions when given; ``mask [H, R, L]`` (boolean) restricts each head's keys
    further (sparse heads). The Triton kernel never stores the ``R x L`` logits (soft-capped logits, a Gemma-2
    feature, and extra masks take the reference)."""
    if q.ndim != 3 or k.ndim != 3 or q.shape[2] != k.shape[2] or q.shape[0] % k.shape[0]:
        raise BadInput(f"q must be [H, R, D] and k [Hkv, L, D] with Hkv dividing H, got {tuple(q.shape)} and "
                       f"{tuple(k.shape)}")
    if qpos.shape != (q.shape[1],):
        raise BadInput(f"qpos must give one position per query row ({q.shape[1]}), got {tuple(qpos.shape)}")
    if softcap or mask is not None or not (use_triton(k) if triton is None else triton):
        return attention_rows_ref(q, k, qpos, scale, window=window, softcap=softcap, mask=mask)
    tk = _kernels()
    h, r, d = q.shape
    length = k.shape[1]
    out = torch.full((h, length), float("nan"), dtype=torch.float32, device=k.device)  # poisoned
    if r == 0:
        return out.zero_()
    tk.attention_rows_kernel[(h,)](q.to(torch.float32).contiguous(), k.to(torch.float32).contiguous(),
                                   qpos.to(device=k.device, dtype=torch.int32).contiguous(), out, r, length, h // k.shape[0], float(scale),
                                   int(window or 0), D=d, BLOCK_R=max(16, _pow2(r)), BLOCK_L=block_l)
    return out


def maxsim(queries: torch.Tensor, weights: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor,
           rows: torch.Tensor, *, block_t: int = 32, triton: bool | None = None) -> torch.Tensor:
    """Late-interaction (ColBERT MaxSim) scores ``[B, C]`` of queries ``[B, Lq, D]`` (``weights [B, Lq]``: 0 for
    padding rows, 1 for ordinary ones, other values for weighted expansion tokens) against the documents
    ``rows [B, C]`` (``-1``: padding), whose tokens are ``tokens[offsets[r]:offsets[r + 1]]`` (float32 or float16,
    packed). Documents without tokens and ``-1`` rows score ``-inf``."""
    if queries.ndim != 3 or tokens.ndim != 2 or queries.shape[2] != tokens.shape[1]:
        raise BadInput(f"query token dimension {tuple(queries.shape)} does not match the document tokens "
                       f"{tuple(tokens.shape)}; encode both with the same model")
    if weights.shape != queries.shape[:2]:
        raise BadInput(f"weights must be [B, Lq] = {tuple(queries.shape[:2])}, got {tuple(weights.shape)}")
    if rows.ndim != 2 or rows.shape[0] != queries.shape[0]:
        raise BadInput(f"rows must be [B, C] with B = {queries.shape[0]}, got {tuple(rows.shape)}")
    if offsets.ndim != 1 or (offsets.numel() and int(offsets[-1]) > tokens.shape[0]):
        raise BadInput(f"offsets must be [N + 1] ending at most at {tokens.shape[0]} tokens")
    if rows.numel() and int(rows.max()) >= offsets.numel() - 1:
        raise BadInput(f"candidate row {int(rows.max())} is out of range for {offsets.numel() - 1} documents")
    if not (use_triton(tokens) if triton is None else triton):
        return maxsim_ref(queries, weights, tokens, offsets, rows)
    tk = _kernels()
    b, lq, d = queries.shape
    c = rows.shape[1]
    out = torch.full((b, c), float("nan"), dtype=torch.float32, device=tokens.device)  # poisoned
    if b == 0 or c == 0:
        return out
    tk.maxsim_kernel[(b, c)](queries.to(torch.float32).contiguous(), weights.to(torch.float32).contiguous(),
                             tokens.contiguous(), offsets.to(torch.int64).contiguous(),
                             rows.to(torch.int64).contiguous(), out, c, lq, d, BLOCK_Q=max(16, _pow2(lq)),
                             BLOCK_T=max(16, _pow2(block_t)), BLOCK_D=max(16, _pow2(d)))
    return out
