"""The reranker interface (:class:`~rankstack.pipeline.core.Reranker`, defined beside the executor): batch-first,
returns new rankings, never mutates its input.

A reranker reorders *every* candidate it is given. How many candidates it gets (the rerank depth) and what happens
to the ones below (kept in input order, scored below the reranked head) is the rerank stage's business, decided in
one place: :class:`rankstack.pipeline.Rerank`.
"""

from rankstack.pipeline.core import Reranker

__all__ = ["Reranker"]
