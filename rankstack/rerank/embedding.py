"""Rerank candidates by the cosine similarity of query and passage embeddings (a bi-encoder reranker)."""

from __future__ import annotations

from typing import Sequence

from rankstack.errors import BadInput
from rankstack.records import Candidate, Ranking
from rankstack.rerank.base import Reranker

__all__ = ["EmbeddingReranker"]


class EmbeddingReranker(Reranker):
    """Scores each (query, passage) pair with an encoder's normalised embeddings; needs candidate documents."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.name = f"embed-rerank({encoder.model_name.split('/')[-1]})"

    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        out = []
        for r in rankings:
            if not r.candidates:
                out.append(r)
                continue
            missing = [c.docid for c in r.candidates if c.document is None]
            if missing:
                raise BadInput(f"candidates {missing[:3]} carry no document text; retrieve with documents attached")
            q = self.encoder.encode_queries([r.query.text])[0]
            d = self.encoder.encode_documents([c.document for c in r.candidates])
            scores = d @ q
            order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), r.candidates[i].docid), reverse=True)
            out.append(Ranking(query=r.query, candidates=tuple(
                Candidate(docid=r.candidates[i].docid, score=float(scores[i]), document=r.candidates[i].document)
                for i in order)))
        return out
