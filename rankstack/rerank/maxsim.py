"""Late-interaction rerankers: MaxSim over a candidate list, and ColBERT-PRF (Wang et al., 2021) on top of it.

Both score candidates from the corpus's stored token vectors when the pipeline's resources have a multi-vector index
for the same encoder (``rankstack eval``/``search --dataset`` build one on first use; ``rankstack index --kind
multivector`` folders; a service collection with a ``maxsim`` index); ``maxsim`` otherwise encodes the candidates'
texts on the fly (``stored=false`` forces that). ColBERT-PRF needs the index: it reads the corpus's token IDF.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.index.multivector import MultiVectorIndex, maxsim_scores
from rankstack.records import Candidate, Ranking
from rankstack.rerank.base import Reranker
from rankstack.retrieval.token_encoders import TokenEncoder, TokenModel

logger = logging.getLogger(__name__)

__all__ = ["MaxSimReranker", "ColbertPRFReranker", "prf_expansion"]


def _reordered(r: Ranking, scores: np.ndarray) -> Ranking:
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), r.candidates[i].docid), reverse=True)
    return Ranking(query=r.query, candidates=tuple(
        Candidate(docid=r.candidates[i].docid, score=float(scores[i]), document=r.candidates[i].document)
        for i in order))


class MaxSimReranker(Reranker):
    """Rerank candidates by MaxSim. ``model``: a loaded :class:`TokenModel` (the factory passes one from the model
    cache); ``stored``: use the attached multi-vector index's token vectors for candidates it holds."""

    wants_token_index = True

    def __init__(self, model: TokenModel | TokenEncoder, *, batch_size: int = 32, query_length: int | None = None,
                 document_length: int | None = None, stored: bool = True, device: str | None = None):
        self.encoder = model if isinstance(model, TokenEncoder) else TokenEncoder(
            model.name, loaded=model, batch_size=batch_size, query_length=query_length,
            document_length=document_length, device=device)
        self.stored = stored
        self.device = device
        self.index: MultiVectorIndex | None = None
        self.name = f"maxsim({self.encoder.model_name.split('/')[-1]})"

    def attach_index(self, index: MultiVectorIndex | None) -> None:
        """Score candidates from ``index`` (built with this reranker's encoder) instead of encoding their texts."""
        if index is not None and index.dim != self.encoder.dim:
            raise BadInput(f"the multi-vector index holds {index.dim}-d tokens but {self.encoder.model_name!r} makes "
                           f"{self.encoder.dim}-d ones")
        self.index = index if self.stored else None

    def _current(self) -> MultiVectorIndex | None:
        """The attached index as of now (a service collection's changes with every write: one snapshot per
        ranking)."""
        return getattr(self.index, "current", self.index)

    def _scores(self, q: np.ndarray, r: Ranking, weights: np.ndarray | None = None, index=None) -> np.ndarray:
        docids = [c.docid for c in r.candidates]
        index = index if index is not None else self._current()
        if index is not None and all(d in index for d in docids):
            return index.score([q], index.rows(docids)[None], None if weights is None else [weights],
                               device=self.device)[0]
        missing = [c.docid for c in r.candidates if c.document is None]
        if missing:
            raise BadInput(f"candidates {missing[:3]} carry no document text and are not in a multi-vector index; "
                           f"retrieve with documents attached")
        enc = self.encoder.encode_documents([c.document for c in r.candidates])
        return maxsim_scores([q], enc.vectors, enc.offsets, np.arange(len(docids))[None],
                             None if weights is None else [weights], device=self.device)[0]

    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        live = [r for r in rankings if r.candidates]
        qs = dict(zip((id(r) for r in live), self.encoder.encode_queries([r.query.text for r in live]))) if live else {}
        return [_reordered(r, self._scores(qs[id(r)], r)) if r.candidates else r for r in rankings]


def prf_expansion(index: MultiVectorIndex, feedback_rows: Sequence[int], *, clusters: int = 24, embeddings: int = 10,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ColBERT-PRF's expansion embeddings: k-means (``clusters`` centroids) over the feedback documents' token
    vectors; each centroid stands for the most frequent vocabulary id among its member tokens; the ``embeddings``
    centroids whose ids have the highest corpus IDF are kept. Returns ``(vectors [e, D], idf [e])``."""
    import faiss

    toks = np.concatenate([index.doc_tokens(int(r)) for r in feedback_rows]).astype(np.float32)
    ids = np.concatenate([np.asarray(index.token_ids[index.offsets[r]:index.offsets[r + 1]]) for r in feedback_rows])
    k = min(clusters, len(toks))
    km = faiss.Kmeans(toks.shape[1], k, niter=20, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=1 << 20)
    km.train(toks)
    _, assign = km.index.search(toks, 1)
    idf = index.idf()
    rep_idf = np.full(k, -np.inf)
    for c in range(k):
        members = ids[assign[:, 0] == c]
        if len(members):
            vals, counts = np.unique(members, return_counts=True)
            tok = vals[np.argmax(counts)]
            rep_idf[c] = idf[tok] if tok < len(idf) else 0.0
    keep = np.argsort(-rep_idf, kind="stable")[:min(embeddings, k)]
    keep = keep[np.isfinite(rep_idf[keep])]
    cents = km.centroids[keep]
    cents = cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    return cents.astype(np.float32), rep_idf[keep]


class ColbertPRFReranker(MaxSimReranker):
    """ColBERT-PRF, reranking form: the top ``fb_docs`` candidates are the feedback documents; the query gains
    ``fb_embs`` expansion embeddings (:func:`prf_expansion`), each weighted ``beta`` times its IDF (as the paper's
    weighting does), and every candidate is rescored with MaxSim over the expanded query.

    ``beta`` defaults to 0.1: the best of 0.1/0.25/0.5/1.0 on NFCorpus's dev split with the offline MiniLM token
    encoder (every value there was below MaxSim alone: 0.3353 at 0.1 against 0.3363; the paper's 1.0 gave 0.3088).
    With a trained ColBERT checkpoint, tune it again (``benchmarks/multivector.py --tune-prf``)."""

    def __init__(self, model: TokenModel | TokenEncoder, *, fb_docs: int = 3, fb_clusters: int = 24, fb_embs: int = 10,
                 beta: float = 0.1, batch_size: int = 32, query_length: int | None = None,
                 document_length: int | None = None, seed: int = 0, device: str | None = None):
        super().__init__(model, batch_size=batch_size, query_length=query_length, document_length=document_length,
                         stored=True, device=device)
        for key, v in (("fb_docs", fb_docs), ("fb_clusters", fb_clusters), ("fb_embs", fb_embs)):
            if v <= 0:
                raise BadInput(f"colbert-prf: {key} must be positive, got {v}")
        if beta < 0:
            raise BadInput(f"colbert-prf: beta must be >= 0, got {beta}")
        self.fb_docs, self.fb_clusters, self.fb_embs, self.beta, self.seed = fb_docs, fb_clusters, fb_embs, beta, seed
        self.name = f"colbert-prf({self.encoder.model_name.split('/')[-1]},fb_docs={fb_docs},fb_embs={fb_embs},beta={beta})"

    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        if self.index is None:
            raise BadInput("colbert-prf needs the corpus's multi-vector index (feedback tokens and their IDF): use it "
                           "where one exists (rankstack eval/search --dataset, `rankstack index --kind multivector` "
                           "folders, or a service collection with a maxsim index)")
        out = []
        for r in rankings:
            if not r.candidates:
                out.append(r)
                continue
            index = self._current()
            q = self.encoder.encode_queries([r.query.text])[0]
            fb = index.rows([c.docid for c in r.candidates[:self.fb_docs]])
            exp, idf = prf_expansion(index, fb, clusters=self.fb_clusters, embeddings=self.fb_embs, seed=self.seed)
            qx = np.concatenate([q, exp])
            w = np.concatenate([np.ones(len(q), np.float32), (self.beta * idf).astype(np.float32)])
            out.append(_reordered(r, self._scores(qx, r, w, index)))
        return out
