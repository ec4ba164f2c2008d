"""Loaded models, shared: one :class:`ModelCache` per process part (the service, a dataset workspace) holds every
model by (role, name), loaded once, whoever asks for it: retrievers' encoders, rerankers' LLMs, relevance adapters.

It sits below retrieval and rerank and knows none of them: the caller names the loader
(``models.get("sentence-transformer", name, load_sentence_transformer)``), so a new model family needs no edit here.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["ModelCache", "remembered"]


class ModelCache:
    """Loaded models by (role, name), built once; thread-safe. Two callers asking for the same (role, name) get the
    same object, so an ICR and a FIRST reranker on one LLM hold one copy of its weights, and a dense retriever and an
    embedding reranker on one encoder share it."""

    def __init__(self, *, remember_queries: bool = False):
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self.queries: dict | None = {} if remember_queries else None
        """With ``remember_queries`` (a dataset workspace: a fixed set of queries, run by several pipelines), every
        encoder made through this cache encodes a query text once, however many retrievers use it
        (:func:`remembered`). Off where queries never repeat (a service)."""

    def get(self, role: str, name: str, load: Callable[[str], Any]) -> Any:
        """The model ``load(name)`` gives, loaded on the first call for (``role``, ``name``). Loading holds a lock
        of its own (other models load meanwhile); a failed load is not cached."""
        key = (role, name)
        with self._lock:
            if key in self._models:
                return self._models[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = load(name)
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
            return model

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._models


class _Remembered:
    """An encoder whose ``encode_queries`` looks each text up in a memo first and encodes only the ones it has not
    seen, in one batch, in their order (the rows a first call stores are the rows later calls get back)."""

    def __init__(self, encoder, memo: dict):
        self._encoder, self._memo = encoder, memo

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode_queries(self, texts, *args, **kwargs):
        if args or kwargs:  # an unusual call (a batch size, a flag): not remembered
            return self._encoder.encode_queries(texts, *args, **kwargs)
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            got = self._encoder.encode_queries(todo)
            for i, t in enumerate(todo):
                self._memo[t] = got[i] if not hasattr(got, "getrow") else got.getrow(i)
        rows = [self._memo[t] for t in texts]
        if rows and hasattr(rows[0], "getrow"):  # sparse rows
            import scipy.sparse as sp

            return sp.vstack(rows, format="csr")
        if rows and hasattr(rows[0], "shape") and len(getattr(rows[0], "shape", ())) == 1:
            import numpy as np

            return np.stack(rows)
        return rows  # token encoders: one matrix per query


def remembered(models: ModelCache, encoder, key) -> object:
    """``encoder``, remembering query encodings in ``models`` when it remembers queries (``key`` names what makes
    two encoders' query vectors equal: the model and its query options)."""
    if models.queries is None:
        return encoder
    return _Remembered(encoder, models.queries.setdefault(key, {}))
