"""What the LLM rerankers share: input checks, passage budgets, sliding windows, output assembly, stats."""

from __future__ import annotations

import logging
import re
import time
from abc import abstractmethod
from typing import Callable, Sequence

from rankstack.errors import BadInput, ContextOverflow
from rankstack.records import Candidate, Ranking
from rankstack.rerank.base import Reranker
from rankstack.rerank.llm.runtime import CausalLM, ForwardStats

logger = logging.getLogger(__name__)

__all__ = ["LLMReranker", "parse_permutation", "sliding_windows", "IDENTIFIERS", "OVERFLOWS", "FLOOR_TOKENS"]

IDENTIFIERS = [chr(ord("A") + i) for i in range(26)]  # single tokens after "[" for Llama/SmolLM-style BPEs


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` from the bottom of the list to the top, as RankGPT slides them."""
    if window <= 0 or stride <= 0:
        raise BadInput(f"window ({window}) and stride ({stride}) must be positive")
    if n <= window:
        return [(0, n)]
    out, end = [], n
    while True:
        start = max(0, end - window)
        out.append((start, end))
        if start == 0:
            return out
        end -= stride


def parse_permutation(text: str, n: int) -> tuple[list[int], int]:
    """Parse ``[C] > [A] > ...`` into window positions; returns ``(permutation, repairs)``.

    Repairs: each dropped duplicate, each identifier outside the window, and each missing identifier (appended
    in the original order) counts one. Bracketless answers like ``C > A > B`` are accepted.
    """
    found = re.findall(r"\[\s*([A-Za-z])\s*\]", text)
    if not found:
        found = re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text)
    seen: list[int] = []
    repairs = 0
    for tok in found:
        i = ord(tok.upper()) - ord("A")
        if i >= n or i in seen:
            repairs += 1
            continue
        seen.append(i)
    missing = [i for i in range(n) if i not in seen]
    return seen + missing, repairs + len(missing)


OVERFLOWS = ("fallback", "error")
FLOOR_TOKENS = 32  # the fewest tokens per passage a prompt is shrunk to before the fallback moves on


class LLMReranker(Reranker):
    """Base for the LLM rerankers: they reorder every candidate they are given (a pipeline's rerank stage hands
    them its top ``depth``).

    ``passage_tokens`` caps each passage; ``last_stats`` holds one :class:`ForwardStats` per query of the last call.
    Scores in the output are rank-based (``n - position``) so that trec_eval orders them exactly as ranked.

    Every prompt is checked against the model's context by its exact token count (the query, the instructions and
    each passage's framing included). ``overflow="fallback"`` (default): a prompt that does not fit gets a lower
    per-passage budget, down to :data:`FLOOR_TOKENS` (``stats.shrunk_prompts``); where not even that fits, ICR
    ranks the query in windows (``stats.window_fallbacks``) and the windowed rerankers fail with
    :class:`~rankstack.errors.ContextOverflow` (lower ``window``). ``overflow="error"``: prompts are built at the
    first budget and one that does not fit fails in the model (:class:`~rankstack.errors.ContextOverflow`), as
    before this rule existed.
    """

    batch_queries = 1

    def __init__(self, llm: CausalLM, *, passage_tokens: int = 100, overflow: str = "fallback"):
        if isinstance(passage_tokens, bool) or not isinstance(passage_tokens, int) or passage_tokens <= 0:
            raise BadInput(f"passage_tokens ({passage_tokens}) must be a positive integer")
        if overflow not in OVERFLOWS:
            raise BadInput(f"overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")
        self.llm = llm
        self.passage_tokens = passage_tokens
        self.overflow = overflow
        self.last_stats: list[ForwardStats] = []
        self._warned = False

    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        with self.llm.lock:  # the model's stats and KV cache serve one call at a time (the service is threaded)
            return self._rerank_all(rankings)

    def _rerank_all(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        self.last_stats = []
        out = []
        for r in rankings:
            if not r.query.text.strip():
                raise BadInput(f"query {r.query.qid!r} is empty")
            if not r.candidates:
                raise BadInput(f"query {r.query.qid!r} has no candidates to rerank")
            missing = [c.docid for c in r.candidates if c.document is None]
            if missing:
                raise BadInput(f"candidates {missing[:3]} carry no document text; retrieve with documents attached")
            self.llm.reset_stats()
            t0 = time.perf_counter()
            head = list(r.candidates)
            stats = ForwardStats()
            order = self._rerank(r.query.text, head, stats)
            if sorted(order) != list(range(len(head))):
                raise AssertionError(f"{type(self).__name__} returned a non-permutation {order}")
            s = self.llm.reset_stats()
            s.add(stats)
            s.seconds = time.perf_counter() - t0
            self.last_stats.append(s)
            final = [head[i] for i in order]
            n = len(final)
            out.append(Ranking(query=r.query, candidates=tuple(
                Candidate(docid=c.docid, score=float(n - i), document=c.document) for i, c in enumerate(final))))
        return out

    def _passages(self, cands: Sequence[Candidate], stats: ForwardStats, budget: int | None = None) -> list[str]:
        out = []
        for c in cands:
            text, cut = self.llm.truncate(" ".join(c.document.contents.split()), budget or self.passage_tokens)
            stats.truncated_passages += cut
            out.append(text)
        return out

    def _fit(self, build: Callable[[int, ForwardStats], tuple], n_passages: int, budget: int, after: int,
             stats: ForwardStats) -> tuple | None:
        """``build(budget, scratch_stats)``'s result (its first item: the prompt's token ids), with the per-passage
        budget lowered until the prompt plus ``after`` more tokens (generation, a later pass) fit the context; None
        when not even :data:`FLOOR_TOKENS` per passage fit. Each step spreads the overshoot over the passages.
        With ``overflow="error"`` the first prompt is returned unchecked: the model refuses it if it is too long."""
        floor = min(FLOOR_TOKENS, budget)
        scratch = ForwardStats()
        built = build(budget, scratch)
        lowered = False
        while self.overflow == "fallback" and (need := len(built[0]) + after) > self.llm.context:
            if budget <= floor:
                return None
            budget = max(floor, budget - -(-(need - self.llm.context) // max(1, n_passages)))
            scratch = ForwardStats()
            built = build(budget, scratch)
            lowered = True
        stats.truncated_passages += scratch.truncated_passages
        if lowered:
            stats.shrunk_prompts += 1
            self._note(f"a prompt of {n_passages} passages did not fit the {self.llm.context}-token context; its "
                       f"passages were cut to {budget} tokens")
        return built

    def _note(self, what: str) -> None:
        """Log the first fallback of this reranker; later ones are counted in the per-query stats."""
        if not self._warned:
            self._warned = True
            logger.warning("%s (first fallback of %s; later ones are counted in the stats: shrunk_prompts, "
                           "window_fallbacks)", what, self.name)

    def _fit_budget(self, n_passages: int, overhead_tokens: int) -> int:
        """The per-passage token budget that fits ``n_passages`` into the context with ``overhead_tokens`` left."""
        room = (self.llm.context - overhead_tokens) // max(1, n_passages)
        if room < 8:
            raise ContextOverflow(f"{n_passages} passages do not fit the model's {self.llm.context}-token context; "
                                  f"lower the window or depth")
        return min(self.passage_tokens, room)

    @abstractmethod
    def _rerank(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        """The new order of ``cands`` as input positions (a permutation)."""

    def _slide(self, cands: list[Candidate], window: int, stride: int,
               rank_window: Callable[[list[Candidate]], list[int]]) -> list[int]:
        order = list(range(len(cands)))
        for start, end in sliding_windows(len(cands), window, stride):
            sub = order[start:end]
            perm = rank_window([cands[i] for i in sub])
            order[start:end] = [sub[p] for p in perm]
        return order
