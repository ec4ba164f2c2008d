"""Context packing for generators: choose passages for a token budget, drop near-duplicates, keep citations.

Passages are taken in ranking order; one that does not fit the remaining budget is skipped (a shorter one below it
may still fit), one too similar to a passage already taken (word-shingle Jaccard >= ``dedup``) is dropped. Each
kept passage gets a citation number, and the packed text labels passages ``[n] title`` so the generator can cite.
Token counts come from a tokenizer the caller names (a Hugging Face tokenizer name or folder, a tokenizer object,
or any ``text -> int`` callable).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rankstack.errors import BadInput
from rankstack.records import Candidate, Ranking

__all__ = ["PackedContext", "Citation", "pack_context", "token_counter", "DEFAULT_CONTEXT_TOKENIZER"]

# what the CLI and the service count a packed context's tokens with unless told otherwise (the offline copy when
# installed); give your generator's tokenizer for budgets that match it
DEFAULT_CONTEXT_TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Citation:
    number: int
    docid: str
    title: str
    score: float
    tokens: int


@dataclass(frozen=True)
class PackedContext:
    """``text``: the passages as one prompt block; ``citations``: what each ``[n]`` refers to; ``tokens``: the
    block's token count; ``dropped``: docids left out, with the reason (``duplicate`` or ``budget``)."""

    text: str
    citations: list[Citation]
    tokens: int
    budget: int
    dropped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON types (the service's ``context`` and ``rankstack search --format json``)."""
        return {"text": self.text, "tokens": self.tokens, "budget": self.budget,
                "citations": [vars(c).copy() for c in self.citations], "dropped": dict(self.dropped)}


def token_counter(tokenizer) -> Callable[[str], int]:
    """``text -> token count`` for a tokenizer name/folder (loaded with transformers), a tokenizer object with
    ``encode``, or a callable returning an int or a list of tokens."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from rankstack.retrieval.encoders import resolve_model

        try:
            tok = AutoTokenizer.from_pretrained(resolve_model(str(tokenizer)))
        except OSError as exc:
            raise BadInput(f"cannot load tokenizer {tokenizer!r} ({str(exc).splitlines()[0]}); give a local folder, "
                           f"a tokenizer object, or a callable that counts tokens") from None
        return lambda text: len(tok.encode(text, add_special_tokens=False))
    if hasattr(tokenizer, "encode"):
        if type(tokenizer).__module__.startswith("transformers"):
            return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
        return lambda text: len(tokenizer.encode(text))
    if callable(tokenizer):
        def count(text: str) -> int:
            n = tokenizer(text)
            return n if isinstance(n, int) else len(n)
        return count
    raise BadInput(f"tokenizer must be a name, a tokenizer object or a callable, got {type(tokenizer).__name__}")


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _jaccard(a: set, b: set) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def _block(number: int, c: Candidate) -> str:
    d = c.document
    head = f"[{number}] {d.title}".rstrip() if d.title else f"[{number}]"
    return f"{head}\n{d.text}"


def pack_context(ranking: Ranking | Sequence[Candidate], budget: int, tokenizer, *, dedup: float = 0.8,
                 separator: str = "\n\n") -> PackedContext:
    """Pack the candidates' passages (in order) into at most ``budget`` tokens. Raises when ``budget`` is below the
    smallest passage (nothing could be packed), or a candidate carries no document."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise BadInput(f"the token budget must be a positive integer, got {budget!r}")
    if not 0.0 < dedup <= 1.0:
        raise BadInput(f"dedup is a Jaccard similarity in (0, 1], got {dedup!r}")
    cands = list(ranking.candidates if isinstance(ranking, Ranking) else ranking)
    missing = [c.docid for c in cands if c.document is None]
    if missing:
        raise BadInput(f"candidates {missing[:3]} carry no document text; retrieve with documents attached")
    count = token_counter(tokenizer)
    sep = count(separator) if separator else 0
    kept: list[tuple[Candidate, str, int, set]] = []
    dropped: dict[str, str] = {}
    used = 0
    smallest = None
    for c in cands:
        block = _block(len(kept) + 1, c)
        n = count(block)
        smallest = n if smallest is None else min(smallest, n)
        sh = _shingles(c.document.text or c.document.title)  # the passage body: duplicates often differ in title
        if any(_jaccard(sh, k[3]) >= dedup for k in kept):
            dropped[c.docid] = "duplicate"
            continue
        cost = n + (sep if kept else 0)
        if used + cost > budget:
            dropped[c.docid] = "budget"
            continue
        kept.append((c, block, n, sh))
        used += cost
    if cands and not kept:
        raise BadInput(f"the token budget ({budget}) is below the smallest passage ({smallest} tokens); raise the "
                       f"budget or retrieve shorter passages")
    citations = [Citation(number=i, docid=c.docid, title=c.document.title, score=c.score, tokens=n)
                 for i, (c, _, n, _) in enumerate(kept, 1)]
    text = separator.join(b for _, b, _, _ in kept)
    return PackedContext(text=text, citations=citations, tokens=count(text) if text else 0, budget=budget,
                         dropped=dropped)
