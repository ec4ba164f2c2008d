"""The int4 weight codec: group-wise asymmetric 4-bit codes, two per byte, a 16-bit scale and real-valued zero point
per group, and optional exact outliers (after SpQR). :func:`dequantize_int4` is the plain reference that
:func:`rankstack.kernels.int4_matmul`'s Triton kernel is tested against; the reranker LLMs' ``weights=int4-g*``
layers (:mod:`rankstack.rerank.llm.quant`) store their weights in it.
"""

from __future__ import annotations

import torch

from rankstack.errors import BadInput

__all__ = ["quantize_int4", "unpack_int4", "dequantize_int4"]


def _groups(w: torch.Tensor, group: int) -> torch.Tensor:
    out, inp = w.shape
    return w.reshape(out, inp // group, group)


def quantize_int4(w: torch.Tensor, group: int, outliers: float = 0.0):
    """``(packed uint8 [out, in/2], scales fp16 [out, in/group], zeros fp16 [out, in/group], outlier index int32
    [n], outlier value fp16 [n])``: ``w ~ (code - zero) * scale`` per group, codes in 0..15, two per byte (low
    nibble first). The zero point is a real number (as GGUF's Q4_1 minimum and HQQ's), so the grid spans exactly
    the group's range. With ``outliers`` > 0 that fraction of weights (those farthest from their group's median) is
    kept exactly, and each group takes the grid, over its full range or over its kept weights only, with the smaller
    squared error on the kept weights."""
    w = w.detach().float()
    out, inp = w.shape
    if inp % group:
        raise BadInput(f"int4 group size {group} does not divide the layer's input dimension {inp}; use a group "
                       f"size that divides it (e.g. int4-g32)")
    g = _groups(w, group)
    q, scale, zero, err = _grid(g, torch.ones_like(g, dtype=torch.bool))
    idx = torch.zeros(0, dtype=torch.int32)
    if outliers > 0:
        # the weights that stretch their group's range most (farthest from the group median): kept exactly, they
        # no longer need to set the range, and the group's other weights may get a finer step
        dev = (g - g.median(dim=-1, keepdim=True).values).abs()
        n = max(1, int(round(outliers * w.numel())))
        idx = torch.topk(dev.flatten(), n).indices
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[idx] = False
        keep = keep.reshape(g.shape)
        err = ((_dequant(q, scale, zero) - g).square() * keep).sum(-1)
        q2, scale2, zero2, err2 = _grid(g, keep)
        # a group already on a 4-bit grid (a model converted from a 4-bit file) keeps it: trimming would move it
        trim = err2 < err
        q = torch.where(trim[..., None], q2, q)
        scale, zero = torch.where(trim, scale2, scale), torch.where(trim, zero2, zero)
        idx = idx.to(torch.int32).sort().values
    q = q.to(torch.uint8).reshape(w.shape)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed, scale.half(), zero.half(), idx, w.flatten()[idx.long()].half()


def _dequant(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero[..., None]) * scale[..., None]


def _grid(g: torch.Tensor, keep: torch.Tensor):
    """Codes, fp16-exact step and zero point over the kept weights' range per group, and the kept weights' squared
    error."""
    big = torch.finfo(torch.float32).max
    lo = torch.where(keep, g, torch.full_like(g, big)).amin(-1)
    hi = torch.where(keep, g, torch.full_like(g, -big)).amax(-1)
    empty = lo > hi  # a group made only of outliers
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    # the step is stored in fp16: floored at its smallest normal (6.1e-5), since a group whose kept weights are all
    # equal has a zero range, and a step that rounds to fp16 zero made zero = 0/0 and the whole layer NaN (SmolLM2's
    # layer-1 down projection has such a group at 0.5% outliers); and at |range end| / 30000, so that the zero point
    # -lo / step stays inside fp16
    fp16 = torch.finfo(torch.float16)
    floor = torch.maximum(lo.abs(), hi.abs()).div(30000).clamp_min(fp16.tiny)
    scale = torch.maximum((hi - lo) / 15, floor).half().float()
    zero = (-lo / scale).half().float()
    q = (g / scale[..., None] + zero[..., None]).round().clamp(0, 15)
    err = ((_dequant(q, scale, zero) - g).square() * keep).sum(-1)
    return q, scale, zero, err


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The codes ``[out, in]`` (uint8, 0..15) of :func:`quantize_int4`'s packed bytes (low nibble first)."""
    q = torch.empty(packed.shape[0], 2 * packed.shape[1], dtype=torch.uint8, device=packed.device)
    q[:, 0::2] = packed & 0xF
    q[:, 1::2] = packed >> 4
    return q


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, idx: torch.Tensor | None = None,
                    vals: torch.Tensor | None = None, *, group: int, shape, dtype=torch.float32) -> torch.Tensor:
    """The dense weight back from :func:`quantize_int4`'s parts (the torch reference)."""
    out, inp = shape
    g = unpack_int4(packed).reshape(out, inp // group, group).to(dtype)
    w = ((g - zeros.to(dtype)[..., None]) * scales.to(dtype)[..., None]).reshape(out, inp)
    if idx is not None and idx.numel():
        w.view(-1)[idx.long()] = vals.to(dtype)
    return w
