"""ONNX Runtime and OpenVINO backends for sentence-transformers encoders (``dense:backend=onnx`` / ``onnx-int8`` /
``openvino`` / ``openvino-bf16``).

The model's transformer is exported once to ONNX (eager attention, dynamic batch and sequence axes), checked
against PyTorch on texts of different lengths, fused by ONNX Runtime's transformer optimizer (attention, layer norm,
GELU), and, for ``onnx-int8``, its linear layers quantized to int8 per output channel with activations quantized on
the fly (dynamic quantization). ``openvino`` converts the same module with OpenVINO's PyTorch frontend into an
OpenVINO IR kept in float32 (no fp16 compression of the weights) and runs it at float32 inference precision, so its
vectors match PyTorch's up to float rounding, like ``onnx``. ``openvino-bf16`` runs that same IR at bfloat16
inference precision: on CPUs with bf16 matrix units (AMX, AVX512-BF16) OpenVINO then multiplies in bf16 with float32
accumulation, and its vectors are checked against PyTorch's by cosine (>= 0.999) when the model is opened; on a CPU
without bf16 support OpenVINO runs float32 and a warning says so. The files live in a cache folder keyed by the model
and the library versions, written atomically, so a second process loads them in a second. Pooling and any later
modules (mean pooling, Normalize, Dense) still run in PyTorch on the runtime's token embeddings, so every
sentence-transformers pipeline works.

Which linear layers ``onnx-int8`` quantizes (:data:`INT8_SCOPES`) was chosen on NFCorpus dev queries, not on the
test queries we report (``benchmarks/encoding.py`` prints the choice: the widest scope within 0.002 nDCG@10 of
float32 on dev); ``int8_scope=`` overrides it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from rankstack._hardware import cpu_flags, cpu_has_bf16_units, forced_choice
from rankstack._optional import available, require
from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, RankStackError

logger = logging.getLogger(__name__)

__all__ = ["OnnxSentenceModel", "BACKENDS", "BACKEND_CHOICES", "INT8_SCOPES", "DEFAULT_INT8_SCOPE", "onnx_cache_root",
           "resolve_backend"]

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16")
BACKEND_CHOICES = ("auto", *BACKENDS)
_BF16_MIN_COSINE = 0.999  # openvino-bf16's pooled vectors against PyTorch's, checked when a model is opened
# linear layers that onnx-int8 quantizes: every MatMul/attention projection, the feed-forward block (up and down
# projections), or only the feed-forward up projection ("intermediate")
INT8_SCOPES = ("all", "ffn", "intermediate")
DEFAULT_INT8_SCOPE = "all"  # chosen on NFCorpus dev (benchmarks/encoding.py): dev nDCG@10 +0.0005
_FORMAT = "1"  # bump when the exported graph or the optimisation steps change: old cache folders are not reused


def onnx_cache_root() -> Path:
    """Where exported models live: ``$RANKSTACK_ONNX_CACHE`` or ``~/.cache/rankstack/onnx``."""
    env = os.environ.get("RANKSTACK_ONNX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rankstack" / "onnx"


def resolve_backend(name: str, device: str | None = None) -> str:
    """``auto`` as this machine resolves it; other names unchanged, unknown ones refused.

    The rule (evidence: "Dense encoders: backend=auto" in benchmarks/RESULTS.md): the fastest backend whose nDCG@10
    stayed within 0.002 of PyTorch float32 on both SciFact and NFCorpus on that kind of CPU. ``openvino-bf16`` on a CPU
    with bf16 units (AMX or AVX512-BF16: 2.6-3.9x, within 0.0013); ``openvino`` (float32, identical rankings,
    1.2-1.5x) on other x86 CPUs; ``torch`` on a GPU device, where OpenVINO is not installed, or where
    ``RANKSTACK_ENCODER_BACKEND`` says so (it forces any backend, e.g. for runs that must match across machines).
    ``onnx-int8`` is never picked: on the AVX2 machine it moved SciFact by +0.0040, outside the 0.002 rule.
    """
    if name not in BACKEND_CHOICES:
        raise BadInput(f"unknown encoder backend {name!r}; use one of {', '.join(BACKEND_CHOICES)}")
    if name != "auto":
        return name
    forced = forced_choice("RANKSTACK_ENCODER_BACKEND", BACKENDS)
    if forced:
        return forced
    if device not in (None, "cpu") or not available("openvino"):
        return "torch"
    if cpu_has_bf16_units():
        return "openvino-bf16"
    return "openvino" if cpu_flags() & {"avx2", "avx512f"} else "torch"


_EXPORT_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, str, int], object] = {}  # ONNX Runtime sessions are thread-safe for run()


class _OpenVinoSession:
    """An OpenVINO compiled model behind ONNX Runtime's session calls (``get_inputs()``, ``run(None, feeds)``).
    Each call takes its own infer request, so concurrent encodes (the service's threads) never share one."""

    def __init__(self, path: Path, threads: int, precision: str = "f32"):
        ov = require("openvino")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            logger.warning("this CPU has no bf16 support (AMX or AVX512-BF16): openvino-bf16 runs in float32")
        # explicit precision: OpenVINO's default is bf16 on CPUs that have it, which `openvino` must not get silently
        config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": precision}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it runs

    def get_inputs(self) -> list:
        return [SimpleNamespace(name=i.get_any_name()) for i in self.compiled.inputs]

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        request = self.compiled.create_infer_request()
        request.infer(feeds)
        return [np.array(request.get_output_tensor(0).data, copy=True)]


class OnnxSentenceModel:
    """Runs a loaded ``SentenceTransformer``'s transformer through ONNX Runtime (or OpenVINO).

    ``encode(texts, batch_size, normalize)`` returns what ``SentenceTransformer.encode`` does (float32 rows in the
    input order), up to float rounding for ``onnx`` (cosine >= 0.99999 to PyTorch's vectors, checked at export) and
    up to int8 rounding for ``onnx-int8``. Texts are tokenized once, sorted by token count and batched, so a batch
    pads to the length of its own texts.
    """

    def __init__(self, st_model, model_name: str, *, backend: str = "onnx", int8_scope: str | None = None,
                 cache_dir: str | Path | None = None, threads: int | None = None):
        if backend not in BACKENDS[1:]:
            raise BadInput(f"unknown exported backend {backend!r}; use one of {', '.join(BACKENDS[1:])}")
        scope = int8_scope or DEFAULT_INT8_SCOPE
        if scope not in INT8_SCOPES:
            raise BadInput(f"unknown int8_scope {scope!r}; use one of {', '.join(INT8_SCOPES)}")
        if backend.startswith("openvino"):
            require("openvino")
        else:
            require("onnxruntime")
            require("onnx")
        import torch

        self.st = st_model
        self.backend = backend
        self.int8_scope = scope if backend == "onnx-int8" else None
        self.tokenizer = st_model.tokenizer
        self.transformer = st_model[0].auto_model
        self.after = list(st_model)[1:]  # pooling, normalize, dense...: run in torch on the token embeddings
        self.folder = Path(cache_dir) if cache_dir else onnx_cache_root() / self._key(model_name)
        path = self._prepare()
        n_threads = threads or torch.get_num_threads()
        key = (str(path), backend, n_threads)  # openvino and openvino-bf16 compile one IR at two precisions
        with _EXPORT_LOCK:  # one session per model file, backend and thread count, shared by every encoder on it
            self.session = _SESSIONS.get(key)
            if self.session is None:
                self.session = self._open(path, n_threads)
                _SESSIONS[key] = self.session
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path

    def _open(self, path: Path, n_threads: int):
        if self.backend == "openvino":
            return _OpenVinoSession(path, n_threads)
        if self.backend == "openvino-bf16":
            session = _OpenVinoSession(path, n_threads, "bf16")
            self._check_cosine(session)
            return session
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    # ---- export ---------------------------------------------------------------------------------------------
    def _key(self, model_name: str) -> str:
        import torch
        import transformers

        cfg = self.transformer.config
        ident = {"model": model_name, "name_or_path": str(getattr(cfg, "_name_or_path", "")),
                 "arch": list(getattr(cfg, "architectures", None) or []), "format": _FORMAT,
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "weights": self._weights_digest()}
        if self.backend.startswith("openvino"):  # a folder per OpenVINO release (both precisions share the IR)
            ident["openvino"] = require("openvino").__version__
        else:
            ident["onnxruntime"] = require("onnxruntime").__version__
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name.split("/")[-1])[:40]
        return f"{safe}-{digest}"

    def _weights_digest(self) -> str:
        # a few values of every tensor: a fine-tuned copy saved under the same name gets another folder
        h = hashlib.sha256()
        for name, p in sorted(self.transformer.state_dict().items()):
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(flat[:: max(1, flat.numel() // 64)][:64].float().numpy().tobytes())
        return h.hexdigest()[:16]

    def _target(self) -> Path:
        if self.backend.startswith("openvino"):
            return self.folder / "openvino" / "model.xml"
        if self.backend == "onnx":
            return self.folder / "model.opt.onnx"
        return self.folder / f"model.opt.int8-{self.int8_scope}.onnx"

    def _prepare(self) -> Path:
        target = self._target()
        with _EXPORT_LOCK:
            if target.exists():
                return target
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.backend.startswith("openvino"):
                self._convert_openvino(target.parent)
                return target
            base = self.folder / "model.opt.onnx"
            if not base.exists():
                self._export_optimized(base)
            if self.backend == "onnx-int8" and not target.exists():
                self._quantize(base, target)
        return target

    def _traceable(self):
        """A float32 copy of the transformer with eager attention, wrapped to take the tokenizer's tensors by
        position and return the token embeddings; a padded probe batch; the input names."""
        import torch

        model = copy.deepcopy(self.transformer).eval().float()
        try:  # the traced graph must hold plain matmul attention: SDPA's mask handling does not export faithfully
            model.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001 - older transformers: set the config field they read
            model.config._attn_implementation = "eager"
        probe = self.tokenizer(["a short probe", "a longer probe text, with more words than the first one has"],
                               padding=True, truncation=True, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in probe]

        class _Tokens(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, *args):
                return self.m(**dict(zip(names, args))).last_hidden_state

        return _Tokens(model), probe, names

    def _convert_openvino(self, dest: Path) -> None:
        """OpenVINO IR (``model.xml`` + ``model.bin``, float32 weights) through OpenVINO's PyTorch frontend, checked
        against PyTorch, then moved into place as one folder rename (a crash leaves no half-written IR)."""
        import torch

        ov = require("openvino")
        logger.info("converting %s to OpenVINO IR in %s (once per model)", type(self.transformer).__name__, dest)
        module, probe, names = self._traceable()
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            staged = Path(tmp) / "openvino"
            staged.mkdir()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracing notes on Python conditions
                converted = ov.convert_model(module, example_input=tuple(probe[n] for n in names),
                                             input=[(ov.PartialShape([-1, -1]), ov.Type.i64) for _ in names])
            for port, n in zip(converted.inputs, names):
                port.get_tensor().set_names({n})
            ov.save_model(converted, str(staged / "model.xml"), compress_to_fp16=False)
            self._check(_OpenVinoSession(staged / "model.xml", 1), names, "OpenVINO conversion")
            shutil.rmtree(dest, ignore_errors=True)  # a folder left by an interrupted older run
            os.replace(staged, dest)

    def _export_optimized(self, dest: Path) -> None:
        import onnxruntime as ort
        import torch

        logger.info("exporting %s to ONNX in %s (once per model)", type(self.transformer).__name__, self.folder)
        module, probe, names = self._traceable()
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["token_embeddings"] = {0: "batch", 1: "sequence"}
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            raw = Path(tmp) / "model.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's notes on traced Python conditions
                torch.onnx.export(module, tuple(probe[n] for n in names), str(raw), input_names=names,
                                  output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17,
                                  dynamo=False)
            opt = Path(tmp) / "model.opt.onnx"
            try:
                from onnxruntime.transformers.optimizer import optimize_model

                cfg = self.transformer.config
                fused = optimize_model(str(raw), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                       hidden_size=int(cfg.hidden_size))
                fused.save_model_to_file(str(opt))
            except Exception as exc:  # noqa: BLE001 - an architecture the fuser does not know: run it unfused
                logger.warning("ONNX Runtime's transformer optimizer failed (%s); using the unfused graph", exc)
                shutil.copyfile(raw, opt)
            self._check(ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"]), names, "ONNX export")
            os.replace(opt, dest)  # atomic: a half-written file is never seen under the final name

    def _probe(self, session, names: list[str]):
        """``session``'s token embeddings and the loaded model's on texts of several lengths (other lengths and batch
        sizes than the probe the graph was traced with), with the attention mask. The reference is the model
        sentence-transformers runs, not the traced copy (tracing leaves that copy computing other values)."""
        import torch

        texts = ["one", "two words here", "a much longer text than any other in this small check, " * 6,
                 "mid length text for the check"]
        b = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            ref = self.transformer(**{n: b[n] for n in names}).last_hidden_state.numpy()
        got = session.run(None, {n: b[n].numpy() for n in names})[0]
        return got, ref, b["attention_mask"].numpy()

    def _check(self, session, names: list[str], what: str) -> None:
        """The exported graph (run by ``session.run(None, feeds)``) must reproduce the loaded model's token
        embeddings on real tokens (a graph that baked in a shape would fail here, not in a search)."""
        got, ref, mask = self._probe(session, names)
        err = float(np.abs(got - ref)[mask.astype(bool)].max())
        if not np.isfinite(err) or err > 1e-3:
            raise RankStackError(f"the {what} of this model differs from PyTorch (max abs error {err:.3g} on "
                                 f"real tokens); use backend=torch for it")

    def _check_cosine(self, session) -> None:
        """A reduced-precision session must give mean-pooled vectors within :data:`_BF16_MIN_COSINE` of PyTorch's
        (a runtime that mis-handles bf16 fails here, not silently in a search)."""
        got, ref, mask = self._probe(session, [i.name for i in session.get_inputs()])
        weights = mask[..., None].astype(np.float32)

        def pooled(x):
            v = (x * weights).sum(1) / weights.sum(1)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        cos = float((pooled(got) * pooled(ref)).sum(1).min())
        if not np.isfinite(cos) or cos < _BF16_MIN_COSINE:
            raise RankStackError(f"backend={self.backend} gives vectors at cosine {cos:.4f} to PyTorch's for this "
                                 f"model (< {_BF16_MIN_COSINE}); use backend=openvino (float32)")

    def _quantize(self, base: Path, dest: Path) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(base), load_external_data=False).graph
        exclude = [n.name for n in graph.node if n.op_type in ("MatMul", "Attention", "Gemm")
                   and not _in_scope(n.name, n.op_type, self.int8_scope)]
        logger.info("quantizing %s to int8 (scope %s, %d linear nodes kept in float32)", base.name,
                    self.int8_scope, len(exclude))
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            out = Path(tmp) / dest.name
            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor on the root logger
            try:
                quantize_dynamic(str(base), str(out), weight_type=QuantType.QInt8, per_channel=True,
                                 nodes_to_exclude=exclude, extra_options={"DefaultTensorType": 1})
            finally:
                root.setLevel(level)
            os.replace(out, dest)

    # ---- encode ---------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, batch_size: int, normalize: bool,
               show_progress: bool | None = None, max_seq_length: int | None = None) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        limit = max_seq_length or self.st.max_seq_length
        encoded = self.tokenizer(list(texts), truncation=True, max_length=limit)  # once; batches are padded below
        order = np.argsort([-len(x) for x in encoded["input_ids"]], kind="stable")
        out: np.ndarray | None = None
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"encode ({self.backend})", disable=not progress_enabled(show_progress)):
            idx = order[start:start + batch_size]
            batch = self.tokenizer.pad({n: [encoded[n][i] for i in idx] for n in self.input_names},
                                       return_tensors="np")
            tokens = self.session.run(None, {n: batch[n].astype(np.int64) for n in self.input_names})[0]
            feats = {"token_embeddings": torch.from_numpy(tokens),
                     "attention_mask": torch.from_numpy(batch["attention_mask"].astype(np.int64))}
            with torch.no_grad():
                for module in self.after:
                    feats = module(feats)
                emb = feats["sentence_embedding"]
                if normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            if out is None:
                out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb.numpy()
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _in_scope(name: str, op_type: str, scope: str) -> bool:
    if scope == "all":
        return True
    if op_type == "Attention" or "attention" in name.lower():
        return False
    if scope == "ffn":
        return True
    return "intermediate" in name.lower()  # scope == "intermediate": the feed-forward up projection only
