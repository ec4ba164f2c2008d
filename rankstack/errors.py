"""Typed errors. Every message says what went wrong and how to fix it; the service maps these to HTTP once."""

from __future__ import annotations

__all__ = [
    "RankStackError",
    "BadInput",
    "DatasetError",
    "IndexNotFound",
    "IndexCorrupt",
    "DimensionMismatch",
    "UnknownDocid",
    "MissingExtra",
    "ContextOverflow",
]


class RankStackError(Exception):
    """Base class of RankStack's own errors."""


class BadInput(RankStackError, ValueError):
    """A caller passed an invalid value (empty query, k <= 0, unknown name...)."""


class DatasetError(RankStackError, ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""


class IndexNotFound(RankStackError, FileNotFoundError):
    """No index at the given path."""


class IndexCorrupt(RankStackError):
    """An index directory exists but its files are inconsistent, truncated or of an unknown format."""


class DimensionMismatch(BadInput):
    """Vectors of the wrong dimension for this index or encoder."""


class UnknownDocid(RankStackError, KeyError):
    """A docid that the index or collection does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown docid"


class MissingExtra(RankStackError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class ContextOverflow(BadInput):
    """A prompt longer than the model's context (the LLM rerankers fall back before this where they can)."""

