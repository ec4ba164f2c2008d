"""Cross-encoder reranking through sentence-transformers' ``CrossEncoder``, batched over all pairs of a call."""

from __future__ import annotations

import logging
import time
from typing import Sequence

from rankstack._optional import require
from rankstack.errors import BadInput
from rankstack.records import Candidate, Ranking
from rankstack.rerank.base import Reranker

logger = logging.getLogger(__name__)

__all__ = ["CrossEncoderReranker", "DEFAULT_CROSS_ENCODER"]

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L6-v2"


class CrossEncoderReranker(Reranker):
    """Score (query, passage) pairs with a cross-encoder; candidates carry the model's scores, best first (ties:
    input order). Pairs of all queries in one call are batched together. ``model``: a Hugging Face name (needs the
    network or the HF cache; no cross-encoder checkpoint ships offline) or a local folder, or a loaded
    ``CrossEncoder``."""

    def __init__(self, model: str | object = DEFAULT_CROSS_ENCODER, *, batch_size: int = 32,
                 max_length: int = 512, device: str = "cpu"):
        if batch_size <= 0:
            raise BadInput(f"batch_size ({batch_size}) must be positive")
        if isinstance(model, str):
            st = require("sentence_transformers")
            try:
                model = st.CrossEncoder(model, max_length=max_length, device=device)
            except OSError as exc:
                raise BadInput(f"cannot load cross-encoder {model!r} ({str(exc).splitlines()[0]}); offline, pass a "
                               f"local folder") from None
        self.model = model
        self.batch_size = batch_size
        self.name = "cross-encoder"
        self.last_seconds = 0.0

    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        t0 = time.perf_counter()
        pairs, owners = [], []
        for qi, r in enumerate(rankings):
            if not r.candidates:
                raise BadInput(f"query {r.query.qid!r} has no candidates to rerank")
            for c in r.candidates:
                if c.document is None:
                    raise BadInput(f"candidate {c.docid!r} carries no document text; retrieve with documents")
                pairs.append((r.query.text, c.document.contents))
                owners.append(qi)
        scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False) if pairs else []
        out, pos = [], 0
        for r in rankings:
            head = list(r.candidates)
            s = [float(x) for x in scores[pos: pos + len(head)]]
            pos += len(head)
            order = sorted(range(len(head)), key=lambda i: (-s[i], i))
            out.append(Ranking(query=r.query, candidates=tuple(
                Candidate(docid=head[i].docid, score=s[i], document=head[i].document) for i in order)))
        self.last_seconds = time.perf_counter() - t0
        return out
