"""A quantized KV cache at rest (after KVQuant, Hooper et al. 2024), for the cache a reranker keeps between passes
(ICR's passages, kept from the N/A pass for the query pass): ``kv=int4`` or ``kv=int2`` in reranker specs.

- Keys per channel: for every head and channel, a 16-bit scale and zero point over blocks of 64 tokens (keys have
  a few large channels; per-channel ranges keep them from flattening the others). Keys are cached after RoPE in
  Hugging Face models, so they are quantized after RoPE (KVQuant's pre-RoPE variant needs the rotation inside the
  attention kernel).
- Values per token: a scale and zero point per head and token over its channels.
- Dense-and-sparse: the 0.5% of key entries and 0.5% of value entries farthest from their block's median are kept
  exactly (fp16 value, int32 flat index) and left out of the ranges.

Codes are packed (two 4-bit or four 2-bit codes per byte). :meth:`QuantizedKV.restore` writes the dequantized
tensors back into the same cache object for the next pass; between the passes only the codes are held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankstack.errors import BadInput

__all__ = ["KV_SCHEMES", "KVScheme", "QuantizedKV", "quantize_tensor", "dequantize_tensor"]

KV_SCHEMES = ("fp32", "int4", "int2")
TOKEN_BLOCK = 64
OUTLIERS = 0.005


@dataclass(frozen=True)
class KVScheme:
    name: str
    bits: int

    @classmethod
    def parse(cls, name: str) -> KVScheme:
        if name not in KV_SCHEMES:
            raise BadInput(f"unknown KV-cache compression {name!r}; choose one of {', '.join(KV_SCHEMES)}")
        return cls(name, {"fp32": 32, "int4": 4, "int2": 2}[name])

    def bytes_per_token(self, num_layers: int, kv_heads: int, head_dim: int) -> float:
        """Bytes one token's keys and values occupy in this format (all layers), counting codes, ranges and
        outliers; for ``fp32`` the float32 cache."""
        hd = kv_heads * head_dim
        if self.bits >= 16:
            return num_layers * 2 * hd * self.bits / 8
        keys = hd * self.bits / 8 + hd * 4 / TOKEN_BLOCK + hd * OUTLIERS * 6
        values = hd * self.bits / 8 + kv_heads * 4 + hd * OUTLIERS * 6
        return num_layers * (keys + values)


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    flat = q.reshape(-1)
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    flat = flat.reshape(-1, per)
    out = torch.zeros(flat.shape[0], dtype=torch.uint8, device=q.device)
    for i in range(per):
        out |= flat[:, i] << (bits * i)
    return out


def _unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, dim=1).reshape(-1)[:n]


def quantize_tensor(x: torch.Tensor, bits: int, dim: int, block: int | None = None, outliers: float = OUTLIERS):
    """Asymmetric ``bits``-bit codes of ``x`` with one range per slice along ``dim`` (reduced over ``dim``), in
    blocks of ``block`` along ``dim`` when given; ``outliers`` of the entries farthest from their slice's median are
    kept exactly. Returns a dict of the stored tensors."""
    x = x.float()
    shape = x.shape
    xm = x.movedim(dim, -1).contiguous()  # a cropped cache is a strided view
    moved = xm.shape
    if block:
        pad = (-moved[-1]) % block
        if pad:
            xm = torch.cat([xm, xm[..., -1:].expand(*moved[:-1], pad)], dim=-1)
        xm = xm.reshape(*moved[:-1], -1, block)
    else:
        xm = xm.unsqueeze(-2)
    xm = xm.contiguous()
    keep = torch.ones(xm.shape, dtype=torch.bool, device=xm.device)
    idx = torch.zeros(0, dtype=torch.int64, device=x.device)
    if outliers > 0 and xm.numel() > 0:
        dev = (xm - xm.median(dim=-1, keepdim=True).values).abs()
        n = max(1, int(outliers * xm.numel()))
        idx = torch.topk(dev.flatten(), n).indices
        keep.view(-1)[idx] = False
    big = torch.finfo(torch.float32).max
    lo = torch.where(keep, xm, torch.full_like(xm, big)).amin(-1, keepdim=True)
    hi = torch.where(keep, xm, torch.full_like(xm, -big)).amax(-1, keepdim=True)
    lo, hi = torch.where(lo > hi, 0.0, lo), torch.where(lo > hi, 0.0, hi)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).half().clamp_min(torch.finfo(torch.float16).tiny)  # never an fp16 zero step
    zero = lo.half()
    q = ((xm - zero.float()) / scale.float()).round().clamp(0, levels).to(torch.uint8)
    return {"codes": _pack(q, bits), "scale": scale, "zero": zero, "outlier_idx": idx.to(torch.int32),
            "outlier_val": xm.flatten()[idx].half(), "bits": bits, "dim": dim, "block": block, "shape": shape,
            "moved": moved, "grid": xm.shape}


def dequantize_tensor(s: dict, dtype=torch.float32) -> torch.Tensor:
    grid = s["grid"]
    q = _unpack(s["codes"], s["bits"], int(torch.Size(grid).numel())).reshape(grid).float()
    xm = q * s["scale"].float() + s["zero"].float()
    if s["outlier_idx"].numel():
        xm.view(-1)[s["outlier_idx"].long()] = s["outlier_val"].float()
    moved = s["moved"]
    xm = xm.reshape(*moved[:-1], -1)[..., :moved[-1]]
    return xm.movedim(-1, s["dim"]).to(dtype).contiguous()


def _stored_bytes(s: dict) -> int:
    return sum(t.numel() * t.element_size() for k, t in s.items() if isinstance(t, torch.Tensor))


class QuantizedKV:
    """The keys and values of a transformers cache held as codes; ``restore()`` puts them back, dequantized, into
    the same cache object (layer types, e.g. sliding-window layers, are kept)."""

    def __init__(self, cache, scheme: KVScheme):
        self.cache, self.scheme = cache, scheme
        self.layers = []
        self.tokens = cache.get_seq_length()
        for layer in cache.layers:
            k, v = layer.keys, layer.values  # [batch, kv_heads, tokens, head_dim]
            self.layers.append((quantize_tensor(k, scheme.bits, dim=2, block=TOKEN_BLOCK),  # per channel, over tokens
                                quantize_tensor(v, scheme.bits, dim=3)))                  # per token, over channels
            layer.keys, layer.values = k[:, :, :0], v[:, :, :0]  # only the codes stay

    def stored_bytes(self) -> int:
        return sum(_stored_bytes(k) + _stored_bytes(v) for k, v in self.layers)

    def restore(self):
        for layer, (k, v) in zip(self.cache.layers, self.layers):
            layer.keys, layer.values = dequantize_tensor(k, layer.keys.dtype), dequantize_tensor(v, layer.values.dtype)
        return self.cache
