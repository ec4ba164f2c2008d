"""Passage-block sparse prefill (``attention=passage-block`` on ICR): each passage attends to the shared instruction
prefix and to itself, the query part attends to everything before it, positions unchanged. Passages then stop
competing for each other's attention in the early layers, and the work grows with the number of passages instead
of with its square.

A :class:`PassageLayout` gives every prompt token a segment (0: shared prefix, 1..n: passage i, ``QUERY``: the
query part). Under it, the runtime's attention function runs PyTorch FlexAttention with a block mask built from
those segments, compiled once (Triton kernels on a GPU, C++ on a CPU, ``dynamic=True`` so prompt lengths do not
recompile); blocks the mask leaves empty are skipped, not computed and masked. ``impl="sdpa"`` runs the same mask
as a dense boolean SDPA mask: the reference the tests compare against. ``computed_blocks``/``dense_blocks`` count
the ``block x block`` tiles of attention work against dense causal attention's, summed over the layers run.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field

import torch

from rankstack.errors import BadInput

logger = logging.getLogger(__name__)

__all__ = ["PassageLayout", "HeadLayout", "TopKLayout", "QUERY", "ATTENTION_MODES", "active_layout", "layout_active"]

QUERY = -1
ATTENTION_MODES = ("dense", "passage-block", "duo", "topk")
_ACTIVE = threading.local()


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


@functools.lru_cache(maxsize=1)
def _static_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


PAD = 256  # the padded path compiles one kernel per multiple of this length
_DYNAMIC_FAILED: list[str] = []  # set once the dynamic-shape kernel failed to compile in this process


def _compile_error(exc: Exception) -> bool:
    return type(exc).__module__.startswith(("torch._inductor", "torch._dynamo"))


@dataclass
class PassageLayout:
    segments: torch.Tensor  # [L] int32
    block: int = 64
    impl: str = "flex"
    computed_blocks: int = 0
    dense_blocks: int = 0
    _masks: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.impl not in ("flex", "flex-padded", "sdpa"):
            raise BadInput(f"passage-block impl must be flex, flex-padded or sdpa, got {self.impl!r}")
        self.segments = torch.as_tensor(self.segments, dtype=torch.int32)

    @classmethod
    def from_spans(cls, length: int, spans, query_start: int, **kw) -> PassageLayout:
        """Segments for a prompt of ``length`` tokens: tokens before the first span are the shared prefix; span
        ``i`` (``[start, end)``) and the tokens after it up to the next span belong to passage ``i + 1``; from
        ``query_start`` on, the query part."""
        seg = torch.zeros(length, dtype=torch.int32)
        starts = [s for s, _ in spans] + [query_start]
        for i, (s, _) in enumerate(spans):
            seg[s:starts[i + 1]] = i + 1
        seg[query_start:] = QUERY
        return cls(seg, **kw)

    def allowed(self, q_idx, kv_idx, window=None):
        seg = self.segments.to(q_idx.device) if isinstance(q_idx, torch.Tensor) else self.segments
        sq, sk = seg[q_idx], seg[kv_idx]
        ok = (kv_idx <= q_idx) & ((sk == 0) | (sq == sk) | (sq == QUERY))
        if window:
            ok = ok & (q_idx - kv_idx < window)
        return ok

    def _block_mask(self, length: int, device, window, padded: int | None = None):
        """The block mask for ``length`` tokens; with ``padded``, for that many, the rows past ``length`` seeing
        only the first key (padding: their output is dropped) and no row seeing a padded key."""
        from torch.nn.attention.flex_attention import create_block_mask

        key = (length, str(device), window, padded)
        if key not in self._masks:
            size = padded or length
            seg = torch.full((size,), -2, dtype=torch.int32)
            seg[:length] = self.segments
            seg = seg.to(device)

            def mask_mod(b, h, q, kv):
                ok = (kv <= q) & ((seg[kv] == 0) | (seg[q] == seg[kv]) | (seg[q] == QUERY))
                if window:
                    ok = ok & (q - kv < window)
                if padded:
                    ok = (ok & (kv < length)) | ((q >= length) & (kv == 0))
                return ok

            bm = create_block_mask(mask_mod, None, None, size, size, device=device, BLOCK_SIZE=self.block)
            full = bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0
            self._masks[key] = (bm, int(bm.kv_num_blocks.sum() + full))
        return self._masks[key]

    def applies(self, query, key) -> bool:
        return query.shape[2] == key.shape[2] == len(self.segments)

    def probe_mask(self, layer: int, qpos: torch.Tensor, length: int):
        return None  # the query part attends to everything

    def attend(self, module, query, key, value, scaling: float):
        """Attention output ``[B, L, H, D]`` (the layout transformers' attention functions return)."""
        length = query.shape[2]
        window = getattr(module, "sliding_window", None)
        n = -(-length // self.block)
        self.dense_blocks += n * (n + 1) // 2
        if self.impl == "sdpa":
            i = torch.arange(length, device=query.device)
            mask = self.allowed(i[:, None], i[None, :], window)
            groups = query.shape[1] // key.shape[1]
            out = torch.nn.functional.scaled_dot_product_attention(
                query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=mask,
                scale=scaling)
            self.computed_blocks += n * (n + 1) // 2
        else:
            gqa = query.shape[1] != key.shape[1]
            out = None
            if self.impl == "flex" and not _DYNAMIC_FAILED:
                bm, blocks = self._block_mask(length, query.device, window)
                try:
                    out = _compiled_flex()(query, key, value, block_mask=bm, scale=scaling, enable_gqa=gqa)
                    self.computed_blocks += blocks
                except Exception as exc:  # noqa: BLE001 - only compiler failures are caught (re-raised otherwise)
                    if not _compile_error(exc):
                        raise
                    # seen with Gemma-3 (head size 256, one key/value head) on CPU: Inductor's dynamic-shape
                    # FlexAttention kernel does not compile; fixed-size kernels on padded lengths do
                    _DYNAMIC_FAILED.append(str(exc).splitlines()[0][:200])
                    logger.warning("FlexAttention with dynamic shapes failed to compile (%s); using fixed-size "
                                   "kernels on lengths padded to a multiple of %d", _DYNAMIC_FAILED[0], PAD)
            if out is None:
                size = -(-length // PAD) * PAD
                bm, blocks = self._block_mask(length, query.device, window, padded=size)
                self.computed_blocks += blocks
                pad = (0, 0, 0, size - length)
                out = _static_flex()(*(torch.nn.functional.pad(t, pad) for t in (query, key, value)), block_mask=bm,
                                     scale=scaling, enable_gqa=gqa)[:, :, :length]
        return out.transpose(1, 2).contiguous()


def active_layout() -> PassageLayout | None:
    return getattr(_ACTIVE, "layout", None)


class layout_active:
    """``with layout_active(layout): model(...)``: prefill passes of exactly ``len(layout.segments)`` tokens use it."""

    def __init__(self, layout: PassageLayout | None):
        self.layout = layout

    def __enter__(self):
        self.prev = getattr(_ACTIVE, "layout", None)
        _ACTIVE.layout = self.layout
        return self.layout

    def __exit__(self, *exc):
        _ACTIVE.layout = self.prev
        return False


# ---- DuoAttention-style heads ------------------------------------------------------------------------------------

@dataclass
class HeadLayout:
    """DuoAttention-style heads (Xiao et al., 2024): the ``full`` ``(layer, head)`` pairs attend to everything,
    every other head only to the first ``sink`` tokens and the last ``window`` ones. Applies to every pass (the
    prompt and the query part over the cache). ``computed_blocks``/``dense_blocks`` count (query row, key) pairs
    scored, over all heads, against dense causal attention's. (FlexAttention with per-head masks hit an inductor
    C++ code-generation error on CPU in torch 2.13, so the streaming heads run blocked SDPA over their key ranges.)"""

    full: frozenset
    num_heads: int
    sink: int = 4
    window: int = 128
    block: int = 64
    impl: str = "blocks"
    computed_blocks: int = 0
    dense_blocks: int = 0

    def full_heads(self, layer: int, device) -> torch.Tensor:
        return torch.tensor([(layer, h) in self.full for h in range(self.num_heads)], dtype=torch.bool,
                            device=device)

    def allowed(self, layer: int, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """``[H, R, L]`` boolean: which keys each head's rows may attend to."""
        full = self.full_heads(layer, qpos.device)[:, None, None]
        causal = (kpos[None, :] <= qpos[:, None])[None]
        near = ((kpos[None, :] < self.sink) | (qpos[:, None] - kpos[None, :] < self.window))[None]
        return causal & (full | near)

    def applies(self, query, key) -> bool:
        return True

    def attend(self, module, query, key, value, scaling: float):
        """Full heads: causal SDPA. Streaming heads: per block of ``block`` query rows, SDPA over the sink tokens
        and the keys from ``window`` before the block to its end only, so their work is ``O(rows x (sink +
        window + block))`` instead of ``O(rows x keys)``. ``impl="sdpa"``: one masked SDPA over everything (the
        reference)."""
        layer = int(module.layer_idx)
        lq, lk = query.shape[2], key.shape[2]
        off = lk - lq
        groups = query.shape[1] // key.shape[1]
        k_all, v_all = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        qpos, kpos = torch.arange(off, lk, device=query.device), torch.arange(lk, device=query.device)
        dense_keys = int((qpos + 1).sum())  # causal (row, key) pairs per head
        self.dense_blocks += dense_keys * self.num_heads
        if self.impl == "sdpa":
            mask = self.allowed(layer, qpos, kpos)
            out = torch.nn.functional.scaled_dot_product_attention(query, k_all, v_all, attn_mask=mask[None],
                                                                   scale=scaling)
            self.computed_blocks += dense_keys * self.num_heads
            return out.transpose(1, 2).contiguous()
        full = self.full_heads(layer, query.device)
        out = torch.empty_like(query)
        fh = full.nonzero().flatten()
        sh = (~full).nonzero().flatten()
        if fh.numel():
            causal = kpos[None, :] <= qpos[:, None]
            out[:, fh] = torch.nn.functional.scaled_dot_product_attention(query[:, fh], k_all[:, fh], v_all[:, fh],
                                                                          attn_mask=causal, scale=scaling)
            self.computed_blocks += dense_keys * fh.numel()
        if sh.numel():
            sink = min(self.sink, lk)
            for r0 in range(0, lq, self.block):
                r1 = min(lq, r0 + self.block)
                lo = max(sink, off + r0 - self.window + 1)
                keys = torch.cat([kpos[:sink], kpos[lo:off + r1]])
                rows = qpos[r0:r1]
                ok = (keys[None, :] <= rows[:, None]) & ((keys[None, :] < self.sink) |
                                                         (rows[:, None] - keys[None, :] < self.window))
                out[:, sh, r0:r1] = torch.nn.functional.scaled_dot_product_attention(
                    query[:, sh, r0:r1], k_all[:, sh][:, :, keys], v_all[:, sh][:, :, keys], attn_mask=ok,
                    scale=scaling)
                self.computed_blocks += (r1 - r0) * keys.numel() * sh.numel()
        return out.transpose(1, 2).contiguous()

    def probe_mask(self, layer: int, qpos: torch.Tensor, length: int) -> torch.Tensor:
        return self.allowed(layer, qpos, torch.arange(length, device=qpos.device))


# ---- top-k token selection for the query rows -------------------------------------------------------------------

@dataclass
class TopKLayout:
    """Top-k key selection for rows appended to a cache (Double Sparsity / Quest style): for each head, approximate
    logits from the ``channels`` heaviest channels (largest mean ``|q_c| * |k_c|`` over this pass's rows and the
    cached keys: a per-prompt calibration, no offline file), the ``tokens`` best keys per row by them, plus the
    rows' own chunk, then exact softmax attention over those keys only. Passes that start from an empty cache run
    dense. ``computed_blocks`` counts exact (row, key) pairs plus the approximate pass's share (channels / head
    dim of every pair); ``dense_blocks`` the causal pairs."""

    tokens: int = 256
    channels: int = 8
    computed_blocks: int = 0
    dense_blocks: int = 0
    _selected: dict = field(default_factory=dict, repr=False)

    def applies(self, query, key) -> bool:
        return query.shape[2] < key.shape[2]

    def attend(self, module, query, key, value, scaling: float):
        layer = int(module.layer_idx)
        b, h, lq, d = query.shape
        lk = key.shape[2]
        off = lk - lq
        groups = h // key.shape[1]
        k_all, v_all = key.repeat_interleave(groups, 1)[0], value.repeat_interleave(groups, 1)[0]  # [H, L, D]
        q = query[0]  # [H, R, D]
        kpos, qpos = torch.arange(lk, device=q.device), torch.arange(off, lk, device=q.device)
        causal = kpos[None, :] <= qpos[:, None]  # [R, L]
        r = min(self.channels, d)
        weight = q.abs().mean(1) * k_all[:, :off].abs().mean(1) if off else q.abs().mean(1)  # [H, D]
        ch = torch.topk(weight, r, dim=-1).indices  # [H, r]
        approx = torch.einsum("hrc,hlc->hrl", torch.gather(q, 2, ch[:, None, :].expand(h, lq, r)),
                              torch.gather(k_all, 2, ch[:, None, :].expand(h, lk, r)))
        approx[:, :, off:] = float("inf")  # the rows' own chunk is always kept
        approx = approx.masked_fill(~causal[None], float("-inf"))
        n = min(lk, self.tokens + lq)
        idx = torch.topk(approx, n, dim=-1).indices  # [H, R, n]
        keep = torch.zeros(h, lq, lk, dtype=torch.bool, device=q.device).scatter_(2, idx, True) & causal[None]
        self._selected[layer] = (off, keep)
        ks = torch.gather(k_all[:, None].expand(h, lq, lk, d), 2, idx[..., None].expand(h, lq, n, d))
        vs = torch.gather(v_all[:, None].expand(h, lq, lk, d), 2, idx[..., None].expand(h, lq, n, d))
        logits = torch.einsum("hrd,hrnd->hrn", q, ks) * scaling
        logits = logits.masked_fill(~torch.gather(keep, 2, idx), float("-inf"))
        out = torch.einsum("hrn,hrnd->hrd", torch.softmax(logits, dim=-1), vs)
        pairs = int(causal.sum())
        self.dense_blocks += pairs * h
        self.computed_blocks += int(keep.sum()) + int(pairs * h * r / d)
        return out[None].transpose(1, 2).contiguous()

    def probe_mask(self, layer: int, qpos: torch.Tensor, length: int):
        if layer not in self._selected:
            return None
        off, keep = self._selected[layer]
        return keep[:, (qpos - off).long().to(keep.device)]
