"""Weight compression of a reranker LLM's linear layers, one interface for every scheme (``weights=`` in reranker
specs): ``fp32`` (unchanged), ``bf16``, ``int8`` (per-output-channel symmetric, weight-only), ``int4-g32``/``g64``/
``g128`` (group-wise asymmetric 4-bit, weight-only: two codes per byte, a 16-bit scale and real-valued zero point per
group), and ``int4-g32-outliers`` (after SpQR: the 0.5% of weights farthest from their group's median, the ones that
stretch the 4-bit ranges, kept as a sparse 16-bit matrix beside the dense codes and left out of their groups' ranges
wherever that lowers the group's error, so the other weights quantize finer).

Every decoder linear layer (attention q/k/v/o and the MLP) is replaced; embeddings, norms and the (tied) output
head stay as they are. ``linear-weight bytes`` count what the replaced layers store. Matmuls: int8 runs PyTorch's
weight-only int8 kernel (``torch._weight_int8pack_mm``) for decoding-size inputs on CPU (it is slow for long
prefills there, which decode the codes and use the dense GEMM); int4 dequantizes its groups and multiplies (the
torch reference), or calls the Triton dequantize-and-multiply kernel on CUDA tensors. A compressed model is saved
once next to the converted checkpoint and reloaded from there (:func:`load_or_compress`).

``int8-torchao`` and ``int4-g32``/``g64``/``g128-torchao`` hand the same layers to torchao (``rankstack[torchao]``):
its int8 weight-only tensor, and its int4 group-wise formats with their kernels (tinygemm's CPU layout with
bfloat16 activations on CPU, the tile-packed CUDA layout on a GPU). They are quantized at every load (torchao's
packed layouts are device-specific, so nothing is cached) and use torchao's own rounding (its int4 zero points
live in the float domain), so their codes differ from the schemes above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rankstack.errors import BadInput, MissingExtra
from rankstack.kernels.int4 import dequantize_int4, quantize_int4, unpack_int4

logger = logging.getLogger(__name__)

__all__ = ["WEIGHT_SCHEMES", "WeightScheme", "Int8Linear", "Int4Linear", "BF16Linear", "TorchaoLinear", "compress_model",
           "linear_weight_bytes", "quantize_int4", "unpack_int4", "dequantize_int4", "load_or_compress",
           "model_fingerprint"]

WEIGHT_SCHEMES = ("fp32", "bf16", "int8", "int4-g32", "int4-g64", "int4-g128", "int4-g32-outliers", "int8-torchao",
                  "int4-g32-torchao", "int4-g64-torchao", "int4-g128-torchao")
OUTLIER_FRACTION = 0.005
DECODE_ROWS = 16  # at most this many input rows: a decoding-size call (int8 and int4 use fused kernels on CPU)
# the layout of a saved compressed checkpoint; a file of another format is compressed again (2: no zero fp16 steps;
# 3: real-valued int4 zero points, per-group choice of the trimmed or full range)
CACHE_FORMAT = "3"


@dataclass(frozen=True)
class WeightScheme:
    name: str
    bits: int
    group: int | None = None
    outliers: float = 0.0
    torchao: bool = False

    @classmethod
    def parse(cls, name: str) -> WeightScheme:
        m = re.fullmatch(r"int4-g(\d+)(-outliers|-torchao)?", name or "")
        if name == "fp32":
            return cls("fp32", 32)
        if name == "bf16":
            return cls("bf16", 16)
        if name in ("int8", "int8-torchao"):
            return cls(name, 8, torchao=name.endswith("-torchao"))
        if m and name in WEIGHT_SCHEMES:
            return cls(name, 4, int(m.group(1)), OUTLIER_FRACTION if m.group(2) == "-outliers" else 0.0,
                       torchao=m.group(2) == "-torchao")
        raise BadInput(f"unknown weight compression {name!r}; choose one of {', '.join(WEIGHT_SCHEMES)}")


# ---- int4 group-wise ------------------------------------------------------------------------------------------

# ---- layers ---------------------------------------------------------------------------------------------------

class _Compressed(nn.Module):
    def __init__(self, src: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = src.in_features, src.out_features
        self.bias = None if src.bias is None else nn.Parameter(src.bias.detach().clone(), requires_grad=False)

    def stored_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "bias")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bytes={self.stored_bytes()}"


class BF16Linear(_Compressed):
    def __init__(self, src: nn.Linear):
        super().__init__(src)
        self.register_buffer("weight", src.weight.detach().to(torch.bfloat16))

    def forward(self, x):
        y = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight)
        y = y.to(x.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


class Int8Linear(_Compressed):
    """Symmetric per-output-channel int8 codes and a float32 scale per channel."""

    def __init__(self, src: nn.Linear):
        super().__init__(src)
        w = src.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp_min(1e-8)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.device.type == "cpu" and x2.shape[0] <= DECODE_ROWS and x2.dtype in (torch.float32, torch.bfloat16,
                                                                          torch.float16):
            # decoding-size batches: PyTorch's weight-only int8 kernel (slow for long prefills on CPU)
            y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scale.to(x2.dtype))
        else:  # prefill: decode the codes once per call (scaled in float32, rounded once to the input's dtype; scaling
            # the output instead costs float32 passes over the activations) and use the dense GEMM
            y = x2 @ (self.qweight.float() * self.scale[:, None]).to(x2.dtype).T
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


class Int4Linear(_Compressed):
    """Group-wise asymmetric int4 (two codes per byte, fp16 scale and zero point per group), plus optional exact
    outliers (flat int32 index + fp16 value)."""

    def __init__(self, src: nn.Linear, group: int, outliers: float = 0.0):
        super().__init__(src)
        self.group = group
        packed, scales, zeros, idx, vals = quantize_int4(src.weight, group, outliers)
        for name, t in (("packed", packed), ("scales", scales), ("zeros", zeros), ("outlier_idx", idx),
                        ("outlier_val", vals)):
            self.register_buffer(name, t)

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_int4(self.packed, self.scales, self.zeros, self.outlier_idx, self.outlier_val,
                               group=self.group, shape=(self.out_features, self.in_features), dtype=dtype)

    def forward(self, x):
        if x.is_cuda:
            from rankstack.kernels import int4_matmul

            y = int4_matmul(x, self.packed, self.scales, self.zeros, self.group)
            if self.outlier_idx.numel():
                y = y + _outlier_matmul(x, self.outlier_idx, self.outlier_val, self.out_features, self.in_features)
        elif x.dtype == torch.bfloat16 and x.numel() <= DECODE_ROWS * self.in_features and self.prepare_fused():
            y = self.fused_matmul(x)
        else:  # decoded in float32 (a bf16 zero point would shift whole groups), then cast to the input's dtype
            y = torch.nn.functional.linear(x, self.dequantized().to(x.dtype))
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    # Decoding-size bf16 inputs (generation: a few rows per call) on CPU spend ~75% of the layer's time decoding the
    # groups; PyTorch's fused int4 kernel (tinygemm's CPU layout) is ~20x faster there (benchmarks/int4_cpu.py) but
    # 2.4x slower than decode + GEMM on prefills. So a layer that sees generation makes, once, a copy of its codes in
    # that layout (the zero point moved to the float domain, scales and zeros as bf16) and counts it in its bytes;
    # prefill-only rerankers (ICR, FIRST) never make it.
    def prepare_fused(self) -> bool:
        """Make the fused kernel's copy of the codes once; False where PyTorch cannot (the layer then decodes)."""
        if getattr(self, "_fused", None) is None:
            try:
                w = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(self.packed).to(torch.int32), 1)
                s, z = self.scales.float(), self.zeros.float()
                sz = torch.stack([s.T, ((8 - z) * s).T], -1).contiguous().to(torch.bfloat16)
                self.register_buffer("fused_codes", w, persistent=False)
                self.register_buffer("fused_scales_zeros", sz, persistent=False)
                if self.outlier_idx.numel():  # the outliers' correction to the decoded codes at their positions
                    flat = self.outlier_idx.long()
                    rows, cols = flat // self.in_features, flat % self.in_features
                    codes = dequantize_int4(self.packed, self.scales, self.zeros, group=self.group,
                                            shape=(self.out_features, self.in_features)).view(-1)[flat]
                    delta = self.outlier_val.float() - codes
                    self.register_buffer("fused_outliers", torch.stack([rows, cols]), persistent=False)
                    self.register_buffer("fused_outlier_delta", delta.to(torch.bfloat16), persistent=False)
                self._fused = True
            except (RuntimeError, AttributeError) as exc:  # an older PyTorch or an unsupported shape: decode instead
                logger.info("fused int4 CPU kernel unavailable for %s (%s); decoding the groups", self, exc)
                self._fused = False
        return self._fused

    def fused_matmul(self, x):
        """``x @ W.T`` through PyTorch's fused int4 CPU kernel (bf16 ``x``; after :meth:`prepare_fused`)."""
        x2 = x.reshape(-1, self.in_features).contiguous()
        y = torch._weight_int4pack_mm_for_cpu(x2, self.fused_codes, self.group, self.fused_scales_zeros)
        if self.outlier_idx.numel():
            rows, cols = self.fused_outliers
            y = y.index_add(1, rows, x2[:, cols] * self.fused_outlier_delta)
        return y.reshape(*x.shape[:-1], self.out_features)


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError:
        raise MissingExtra("the *-torchao weight schemes need torchao: `pip install 'rankstack[torchao]'` (or use "
                           "int8 / int4-g32, RankStack's own kernels)") from None
    return tq


class TorchaoLinear(_Compressed):
    """A decoder linear layer quantized by torchao: ``bits=8`` its int8 weight-only tensor (per output channel), or
    ``bits=4`` its group-wise int4 (CPU: tinygemm's packed layout, run with bfloat16 activations; CUDA: the
    tile-packed layout). The layout follows the device of ``src``'s weight, so move the model first."""

    def __init__(self, src: nn.Linear, bits: int, group: int | None = None):
        super().__init__(src)
        tq = _torchao()
        w = src.weight.detach()
        self.act_dtype = None if bits == 8 else torch.bfloat16
        inner = nn.Linear(self.in_features, self.out_features, bias=False, device=w.device,
                          dtype=self.act_dtype or w.dtype)
        with torch.no_grad():
            inner.weight.copy_(w)
        if bits == 8:
            config = tq.Int8WeightOnlyConfig()
        elif w.is_cuda:
            config = tq.Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")
        else:
            from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

            config = PrototypeInt4WeightOnlyConfig(group_size=group)
        tq.quantize_(inner, config)
        self.inner = inner

    def stored_bytes(self) -> int:
        t = self.inner.weight
        names, _ = t.__tensor_flatten__()
        return sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)

    def forward(self, x):
        y = self.inner(x.to(self.act_dtype) if self.act_dtype else x).to(x.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


def _outlier_matmul(x, idx, vals, out_f, in_f):
    """``x @ S.T`` for the sparse outlier matrix ``S`` (COO from flat indices)."""
    rows, cols = idx.long() // in_f, idx.long() % in_f
    s = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals.to(x.dtype), (out_f, in_f)).to_dense()
    return x @ s.T


# ---- the model ------------------------------------------------------------------------------------------------

def _decoder_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    head = getattr(model, "lm_head", None)
    out: list[tuple[str, nn.Module]] = []
    for n, m in model.named_modules():
        if out and isinstance(out[-1][1], _Compressed) and n.startswith(out[-1][0] + "."):
            continue  # inside a compressed layer (torchao's quantized nn.Linear): counted by its owner
        if isinstance(m, (nn.Linear, _Compressed)) and m is not head and ".layers." in f".{n}":
            out.append((n, m))
    return out


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes stored by the decoder's linear layers (weights, scales, zero points, outliers; biases excluded)."""
    total = 0
    for _, m in _decoder_linears(model):
        total += m.stored_bytes() if isinstance(m, _Compressed) else m.weight.numel() * m.weight.element_size()
    return total


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def compress_model(model: nn.Module, scheme: str | WeightScheme) -> dict:
    """Replace the decoder's linear layers in place; returns ``{"scheme", "linear_bytes", "fp32_linear_bytes",
    "ratio", "layers"}``."""
    s = scheme if isinstance(scheme, WeightScheme) else WeightScheme.parse(scheme)
    layers = _decoder_linears(model)
    if not layers:
        raise BadInput("the model has no decoder linear layers under '.layers.' to compress")
    fp32 = sum(m.in_features * m.out_features * 4 for _, m in layers)
    if s.group:
        bad = sorted({m.in_features for _, m in layers if m.in_features % s.group})
        if bad:
            raise BadInput(f"{s.name}: group size {s.group} does not divide the input dimension(s) {bad} of this "
                           f"model's layers; use a group size that divides them (e.g. int4-g32)")
    if s.torchao:
        _torchao()  # a missing extra fails before any layer changes
    if s.name != "fp32":
        for name, m in layers:
            if isinstance(m, _Compressed):
                raise BadInput("the model is already compressed")
            new = (TorchaoLinear(m, s.bits, s.group) if s.torchao else BF16Linear(m) if s.bits == 16
                   else Int8Linear(m) if s.bits == 8 else Int4Linear(m, s.group, s.outliers))
            _set(model, name, new)
    got = linear_weight_bytes(model)
    return {"scheme": s.name, "linear_bytes": got, "fp32_linear_bytes": fp32, "ratio": got / fp32,
            "layers": len(layers)}


def model_fingerprint(model: nn.Module) -> str:
    """The architecture and a checksum of the uncompressed weights: a compressed checkpoint loads only onto the
    model it was made from."""
    h = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for _, m in _decoder_linears(model)[:4]:
        w = m.weight.detach().float()
        h.update(f"{w.shape}:{float(w.sum()):.6e}:{float(w.abs().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def load_or_compress(model: nn.Module, scheme: str, cache_dir: Path | None) -> dict:
    """Compress ``model``; with ``cache_dir`` reuse ``<cache_dir>/weights-<scheme>.safetensors`` when it was made from
    this model (no quantization work then), else write it (atomically) for the next load."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    s = WeightScheme.parse(scheme)
    if s.name == "fp32" or s.torchao or cache_dir is None:  # torchao's packed layouts are quantized at each load
        return compress_model(model, s)
    path = Path(cache_dir) / f"weights-{s.name}.safetensors"
    fp = model_fingerprint(model)
    if path.exists():
        with safe_open(str(path), "pt") as f:
            stale = (f.metadata() or {}).get("format") != CACHE_FORMAT
        if stale:  # written by an older RankStack whose codes may differ: compress again
            logger.warning("%s was written in an older format; compressing the model again", path)
    if path.exists() and not stale:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != fp or meta.get("scheme") != s.name:
                raise BadInput(f"{path} is a compressed checkpoint of another model or scheme "
                               f"({meta.get('model', '?')}, {meta.get('scheme', '?')}) than this one "
                               f"({getattr(model.config, '_name_or_path', '?')}, {s.name}); delete it to compress "
                               f"again")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        fp32 = 0
        for name, m in _decoder_linears(model):
            fp32 += m.in_features * m.out_features * 4
            parts = {k[len(name) + 1:]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
            if not parts:
                raise BadInput(f"{path} has no weights for layer {name}; delete it to compress again")
            _set(model, name, _restore(m, s, parts))
        got = linear_weight_bytes(model)
        return {"scheme": s.name, "linear_bytes": got, "fp32_linear_bytes": fp32, "ratio": got / fp32,
                "layers": len(_decoder_linears(model)), "loaded_from": str(path)}
    stats = compress_model(model, s)
    state = {f"{name}.{b}": t.contiguous() for name, m in _decoder_linears(model)
             for b, t in m.named_buffers() if b != "bias" and not b.startswith("fused_")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata={"fingerprint": fp, "scheme": s.name, "format": CACHE_FORMAT,
                                         "model": str(getattr(model.config, "_name_or_path", ""))})
    os.replace(tmp, path)
    return stats


def _restore(src: nn.Linear, s: WeightScheme, parts: dict[str, torch.Tensor]) -> nn.Module:
    """A compressed layer from saved buffers, without quantizing again."""
    cls = BF16Linear if s.bits == 16 else Int8Linear if s.bits == 8 else Int4Linear
    m = cls.__new__(cls)
    _Compressed.__init__(m, src)
    if s.bits == 4:
        m.group = s.group
    for name, t in parts.items():
        m.register_buffer(name, t)
    return m
