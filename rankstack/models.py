"""Loaded models, shared: one :class:`ModelCache` per process part (the service, a dataset workspace) holds every
model by (role, name), loaded once, whoever asks for it: retrievers' encoders, rerankers' LLMs, relevance adapters.

It sits below retrieval and rerank and knows none of them: the caller names the loader
(``models.get("sentence-transformer", name, load_sentence_transformer)``), so a new model family needs no edit here.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["ModelCache"]


class ModelCache:
    """Loaded models by (role, name), built once; thread-safe. Two callers asking for the same (role, name) get the
    same object, so an ICR and a FIRST reranker on one LLM hold one copy of its weights, and a dense retriever and an
    embedding reranker on one encoder share it."""

    def __init__(self):
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

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
