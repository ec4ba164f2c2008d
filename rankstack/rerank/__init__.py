"""Rerankers: cross-encoder and LLM rerankers behind one batch-first interface."""

from rankstack.rerank.base import Reranker

__all__ = ["Reranker"]
