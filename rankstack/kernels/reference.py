"""Plain PyTorch references for the Triton kernels; also the CPU path where FAISS has no equivalent.

Every top-k here breaks ties the same way as the kernels: by a packed int64 key ``(score_key << 32) | row``, so
equal distances come out in ascending row order and the reference and kernel ids agree exactly.
"""

from __future__ import annotations

import torch

__all__ = ["hamming_topk_ref", "pq_adc_topk_ref", "rescore_ref", "float_order_key", "key_to_float", "unpack_keys",
           "topk_by_score", "POPCOUNT8"]

POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)
_SENTINEL = torch.iinfo(torch.int64).max


def float_order_key(scores: torch.Tensor, largest: bool) -> torch.Tensor:
    """Map float32 scores to int32 keys whose ascending order is the wanted order (best first)."""
    b = scores.contiguous().to(torch.float32).view(torch.int32)
    ordered = b ^ ((b >> 31) & 0x7FFFFFFF)
    return ~ordered if largest else ordered


def key_to_float(keys: torch.Tensor, largest: bool) -> torch.Tensor:
    """The inverse of :func:`float_order_key`: the float32 scores behind int32 keys (bit-exact)."""
    ordered = ~keys if largest else keys
    b = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)  # the sign-dependent flip is its own inverse
    return b.to(torch.int32).contiguous().view(torch.float32)


def topk_by_score(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best ``(score, id)`` pairs of each row, scores descending and ties by ascending id; ``-1`` ids
    (no candidate) come last as ``(-inf, -1)``. ``ids`` must be non-negative 32-bit values or ``-1``."""
    keys = _pack(float_order_key(scores, largest=True), ids.clamp(min=0))
    keys = torch.where(ids >= 0, keys, torch.full_like(keys, _SENTINEL))
    kk = min(k, keys.shape[1])
    hi, rows = unpack_keys(keys, kk)
    out = key_to_float(hi, largest=True)
    out = torch.where(rows >= 0, out, torch.full_like(out, float("-inf")))
    if kk < k:
        out = torch.cat([out, torch.full((out.shape[0], k - kk), float("-inf"), device=out.device)], dim=1)
        rows = torch.cat([rows, torch.full((rows.shape[0], k - kk), -1, dtype=rows.dtype, device=rows.device)], 1)
    return out, rows


def _pack(hi: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return (hi.to(torch.int64) << 32) | rows.to(torch.int64)


def unpack_keys(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split packed keys ``[Q, >=k]`` (ascending) into ``(hi int32, rows int64)``; sentinels become row ``-1``."""
    best = torch.topk(keys, k, dim=1, largest=False, sorted=True).values
    rows = (best & 0xFFFFFFFF).to(torch.int64)
    hi = (best >> 32).to(torch.int32)
    empty = best == _SENTINEL
    rows[empty] = -1
    hi[empty] = -1
    return hi, rows


def _popcount_xor(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    lut = POPCOUNT8.to(codes.device)
    return lut[(q[:, None, :] ^ codes[None, :, :]).to(torch.int64)].sum(dim=2, dtype=torch.int32)


def hamming_topk_ref(queries: torch.Tensor, codes: torch.Tensor, k: int, *, chunk: int = 65536
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Hamming top-k over packed uint8 codes ``[N, B]``: ``(distances int32 [Q, k], rows int64 [Q, k])``."""
    n = codes.shape[0]
    best = torch.full((queries.shape[0], k), _SENTINEL, dtype=torch.int64, device=codes.device)
    for s in range(0, n, chunk):
        d = _popcount_xor(queries, codes[s:s + chunk])
        keys = _pack(d, torch.arange(s, s + d.shape[1], device=codes.device)[None, :].expand_as(d))
        best = torch.topk(torch.cat([best, keys], dim=1), k, dim=1, largest=False, sorted=True).values
    return unpack_keys(best, k)


def pq_adc_topk_ref(lut: torch.Tensor, codes: torch.Tensor, k: int, *, largest: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """PQ asymmetric distance: ``score[q, n] = sum_m lut[q, m, codes[n, m]]``, summed in ascending m order.

    ``lut``: float32 ``[Q, M, 256]``; ``codes``: uint8 ``[N, M]``. Returns ``(scores float32 [Q, k], rows [Q, k])``,
    best first (largest scores for inner product, smallest for L2).
    """
    q, m_sub, ks = lut.shape
    idx = codes.to(torch.int64)
    acc = torch.zeros((q, codes.shape[0]), dtype=torch.float32, device=codes.device)
    for m in range(m_sub):
        acc = acc + lut[:, m, :][:, idx[:, m]]
    keys = _pack(float_order_key(acc, largest),
                 torch.arange(codes.shape[0], device=codes.device)[None, :].expand_as(acc))
    kk = min(k, keys.shape[1])
    hi, rows = unpack_keys(keys, kk)
    scores = torch.gather(acc, 1, rows.clamp(min=0))
    if kk < k:
        pad = k - kk
        scores = torch.cat([scores, torch.full((q, pad), float("nan"), device=codes.device)], dim=1)
        rows = torch.cat([rows, torch.full((q, pad), -1, dtype=torch.int64, device=codes.device)], dim=1)
    return scores, rows


def rescore_ref(queries: torch.Tensor, vectors: torch.Tensor, ids: torch.Tensor,
                scales: torch.Tensor | None = None) -> torch.Tensor:
    """Exact inner products of each query with its candidate rows: ``[Q, C]``; ``-1`` ids score ``-inf``.
    ``scales`` (float32 ``[N]``, int8 tiers): row ``i`` stands for ``vectors[i] * scales[i]``."""
    safe = ids.clamp(min=0)
    v = vectors[safe].to(torch.float32)
    s = (v * queries.to(torch.float32)[:, None, :]).sum(dim=2)
    if scales is not None:
        s = s * scales.to(torch.float32)[safe]
    return torch.where(ids >= 0, s, torch.full_like(s, float("-inf")))


def int4_matmul_ref(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group: int) -> torch.Tensor:
    """``x [M, K] @ W^T`` with ``W`` decoded from int4 group codes (the reference of the Triton int4 kernels)."""
    from rankstack.kernels.int4 import dequantize_int4

    n, k = packed.shape[0], packed.shape[1] * 2
    w = dequantize_int4(packed, scales, zeros, group=group, shape=(n, k), dtype=torch.float32)
    return (x.to(torch.float32) @ w.T).to(x.dtype)


def attention_rows_ref(q: torch.Tensor, k: torch.Tensor, qpos: torch.Tensor, scale: float, *,
                       window: int | None = None, softcap: float | None = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[H, L]``: softmax attention from the rows ``q [H, R, D]`` (positions ``qpos``) to the keys ``k [Hkv, L, D]``,
    causal (and windowed), averaged over the rows; the ``R x L`` logits are built in full (the reference)."""
    q, k = q.float(), k.float()
    if k.shape[0] != q.shape[0]:
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    logits = torch.matmul(q, k.transpose(1, 2)) * scale  # [H, R, L]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    kpos = torch.arange(k.shape[1], device=k.device)[None, :]
    ok = kpos <= qpos.to(k.device)[:, None]
    if window:
        ok &= (qpos.to(k.device)[:, None] - kpos) < window
    ok = ok[None] if mask is None else ok[None] & mask.to(ok.device)
    logits = logits.masked_fill(~ok, float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1)


# ---- late interaction (MaxSim) ----------------------------------------------------------------------------------

def segment_max(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[R, sum(lengths)] -> [R, len(lengths)]``: the maximum of each row over each consecutive segment of columns;
    ``-inf`` for an empty segment."""
    if scores.shape[1] == 0:
        return torch.full((scores.shape[0], lengths.shape[0]), float("-inf"), dtype=scores.dtype)
    lengths = lengths.to(torch.int64)
    return torch.segment_reduce(scores, "max", lengths=lengths.expand(scores.shape[0], -1).contiguous(), axis=1,
                                unsafe=True, initial=float("-inf"))


def maxsim_ref(queries: torch.Tensor, weights: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
    """Late-interaction scores ``[B, C]``: for query ``b`` and candidate document ``rows[b, c]`` (tokens
    ``offsets[r]:offsets[r+1]`` of ``tokens [T, D]``), ``sum_i weights[b, i] * max_j <queries[b, i], token_j>``.
    Query rows with weight 0 (padding) are skipped; a ``-1`` row or a document without tokens scores ``-inf``.
    float32 arithmetic whatever the storage dtype."""
    b, c = rows.shape
    out = torch.full((b, c), float("-inf"), dtype=torch.float32)
    offsets = offsets.to(torch.int64)
    for i in range(b):
        live = weights[i] != 0
        q = queries[i][live].to(torch.float32)
        w = weights[i][live].to(torch.float32)
        ok = rows[i] >= 0
        r = rows[i][ok].to(torch.int64)
        if r.numel() == 0:
            continue
        starts, ends = offsets[r], offsets[r + 1]
        lengths = ends - starts
        if r.numel() == offsets.numel() - 1 and torch.equal(r, torch.arange(r.numel())):
            toks = tokens[int(offsets[0]):int(offsets[-1])]  # every document in order: no gather
        else:
            idx = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths) + torch.arange(
                int(lengths.sum()))
            toks = tokens[idx]
        sims = (toks.to(torch.float32) @ q.T).T.contiguous()  # [tokens, Lq] GEMM: faster than q @ toks.T on CPU
        best = segment_max(sims, lengths)  # [Lq, n]
        s = (w[:, None] * best).sum(0) if q.shape[0] else torch.zeros(r.numel())
        out[i, ok] = torch.where(lengths > 0, s, torch.full_like(s, float("-inf")))
    return out
