"""Listwise rerankers on a RankGPT/RankZephyr prompt: generation (permutation text) and FIRST (first-token logits)."""

from __future__ import annotations

import logging

import torch

from rankstack.errors import BadInput, ContextOverflow
from rankstack.records import Candidate
from rankstack.rerank.llm.base import FLOOR_TOKENS, IDENTIFIERS, LLMReranker, parse_permutation
from rankstack.rerank.llm.runtime import CausalLM, ForwardStats

logger = logging.getLogger(__name__)

__all__ = ["ListwiseReranker", "FirstReranker", "listwise_prompt"]

SYSTEM = ("You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the "
          "query.")


def listwise_prompt(llm: CausalLM, query: str, passages: list[str]) -> str:
    n = len(passages)
    body = "".join(f"[{IDENTIFIERS[i]}] {p}\n" for i, p in enumerate(passages))
    user = (f"I will provide you with {n} passages, each indicated by an identifier in brackets. Rank the "
            f"passages based on their relevance to the search query: {query}.\n\n{body}\n"
            f"Search Query: {query}.\nRank the {n} passages above based on their relevance to the search query. "
            f"All the passages should be included and listed using identifiers, in descending order of relevance. "
            f"The output format should be [] > [], e.g., [B] > [A]. Only respond with the ranking results, do not "
            f"say any word or explain.")
    return llm.chat(SYSTEM, user, assistant_prefix="[")


class _Windowed(LLMReranker):
    def __init__(self, llm: CausalLM, *, window: int = 20, stride: int = 10, passage_tokens: int = 100,
                 overflow: str = "fallback"):
        super().__init__(llm, passage_tokens=passage_tokens, overflow=overflow)
        if window > len(IDENTIFIERS):
            raise BadInput(f"window {window} exceeds the {len(IDENTIFIERS)} single-token identifiers")
        self.window, self.stride = window, stride

    def _prompt_ids(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        overhead = len(self.llm.encode(listwise_prompt(self.llm, query, [""] * len(cands)))) + 4 * len(cands)
        budget = self._fit_budget(len(cands), overhead + self.reserve)
        built = self._fit(
            lambda b, st: (self.llm.encode(listwise_prompt(self.llm, query, self._passages(cands, st, b))),),
            len(cands), budget, self.reserve, stats)
        if built is None:
            raise ContextOverflow(f"a window of {len(cands)} passages does not fit the model's {self.llm.context}-"
                                  f"token context even at {FLOOR_TOKENS} tokens each; lower the window")
        return built[0]

    reserve = 8

    def _rerank(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        return self._slide(cands, self.window, self.stride, lambda w: self._rank_window(query, w, stats))


class ListwiseReranker(_Windowed):
    """Generate the permutation (greedy), parse it robustly; ``stats.repairs`` counts fixes to the output."""

    name = "listwise"

    @property
    def reserve(self) -> int:  # room for the generated permutation
        return 4 * self.window + 8

    def _rank_window(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        ids = self._prompt_ids(query, cands, stats)
        text = "[" + self.llm.generate(ids, max_new_tokens=4 * len(cands) + 4)
        perm, repairs = parse_permutation(text, len(cands))
        stats.repairs += repairs
        if repairs:
            logger.debug("repaired %d identifiers in %r", repairs, text)
        return perm


class FirstReranker(_Windowed):
    """FIRST (Reddy et al., 2024): one forward pass per window; candidates ordered by the logit of their identifier
    as the first generated token (the prompt ends with ``[``). Ties keep the input order."""

    name = "first"

    def identifier_logits(self, query: str, cands: list[Candidate], stats: ForwardStats) -> torch.Tensor:
        ids = self._prompt_ids(query, cands, stats)
        logits = self.llm.next_token_logits(ids)
        tok = [self.llm.encode(IDENTIFIERS[i]) for i in range(len(cands))]
        if any(len(t) != 1 for t in tok):
            raise BadInput("this tokenizer splits the identifiers A-Z into several tokens; FIRST needs single-token "
                           "identifiers")
        return logits[[t[0] for t in tok]]

    def _rank_window(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        scores = self.identifier_logits(query, cands, stats)
        return sorted(range(len(cands)), key=lambda i: (-float(scores[i]), i))
