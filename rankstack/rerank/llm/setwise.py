"""Setwise reranking (Zhuang et al., SIGIR 2024): the LLM picks the most relevant passage of a small set; a
``set_size``-ary heap sort built on that choice yields the top ``k`` in ``O(k log n)`` comparisons.

Each choice is one forward pass (the next-token logits over the set's labels). ``reasoning=True`` instead lets the
model think first in the Rank-R1 format ``<think>...</think><answer>[X]</answer>`` (greedy generation) and parses
the answer robustly: the ``<answer>`` tag, else the last label mentioned, else the logits fallback (counted as a
repair).
"""

from __future__ import annotations

import re

import torch

from rankstack.errors import BadInput, ContextOverflow
from rankstack.records import Candidate
from rankstack.rerank.llm.base import FLOOR_TOKENS, IDENTIFIERS, LLMReranker
from rankstack.rerank.llm.runtime import CausalLM, ForwardStats

__all__ = ["SetwiseReranker", "parse_answer"]


def parse_answer(text: str, n: int) -> int | None:
    """The chosen label's index from a Rank-R1 style answer, or None when nothing valid is found."""
    m = re.search(r"<answer>\s*\[?\s*([A-Za-z])\s*\]?", text)
    picks = [m.group(1)] if m else re.findall(r"\[\s*([A-Za-z])\s*\]|(?<![A-Za-z])([A-Z])(?![A-Za-z])", text)
    for p in reversed([p if isinstance(p, str) else (p[0] or p[1]) for p in picks]):
        i = ord(p.upper()) - ord("A")
        if 0 <= i < n:
            return i
    return None


class SetwiseReranker(LLMReranker):
    name = "setwise"

    def __init__(self, llm: CausalLM, *, k: int = 10, set_size: int = 4, passage_tokens: int = 100,
                 reasoning: bool = False, max_think_tokens: int = 256, overflow: str = "fallback"):
        super().__init__(llm, passage_tokens=passage_tokens, overflow=overflow)
        if not 2 <= set_size <= len(IDENTIFIERS):
            raise BadInput(f"set_size must be between 2 and {len(IDENTIFIERS)}, got {set_size}")
        self.k, self.set_size, self.reasoning, self.max_think_tokens = k, set_size, reasoning, max_think_tokens

    def _prompt(self, query: str, passages: list[str]) -> str:
        body = "\n\n".join(f"Passage [{IDENTIFIERS[i]}]: {p}" for i, p in enumerate(passages))
        labels = ", ".join(f"[{IDENTIFIERS[i]}]" for i in range(len(passages)))
        if self.reasoning:
            user = (f"Given a query and {len(passages)} passages, find the passage most relevant to the query.\n\n"
                    f"Query: {query}\n\n{body}\n\nThink step by step inside <think> </think>, then give the label "
                    f"of the most relevant passage ({labels}) inside <answer> </answer>.")
            return self.llm.chat(None, user, assistant_prefix="<think>")
        user = (f'Given a query "{query}", which of the following passages is the most relevant to the query?\n\n'
                f"{body}\n\nOutput only the passage label of the most relevant passage: {labels}.")
        return self.llm.chat(None, user, assistant_prefix="Passage [")

    def choose(self, query: str, cands: list[Candidate], stats: ForwardStats) -> int:
        """Index (into ``cands``) of the passage the model judges most relevant."""
        if len(cands) == 1:
            return 0
        after = self.max_think_tokens + 16 if self.reasoning else 1  # the reasoning, then the answer's label
        built = self._fit(lambda b, st: (self.llm.encode(self._prompt(query, self._passages(cands, st, b))),),
                          len(cands), self.passage_tokens, after, stats)
        if built is None:
            raise ContextOverflow(f"a set of {len(cands)} passages does not fit the model's {self.llm.context}-token "
                                  f"context even at {FLOOR_TOKENS} tokens each; lower set_size")
        ids = built[0]
        if self.reasoning:
            text = self.llm.generate(ids, self.max_think_tokens, stop=("</answer>",))
            pick = parse_answer(text, len(cands))
            if pick is not None:
                return pick
            stats.repairs += 1
            ids = ids + self.llm.encode(text + "</think>\n<answer>[")
        logits = self.llm.next_token_logits(ids)
        label_ids = [self.llm.encode(IDENTIFIERS[i])[0] for i in range(len(cands))]
        scores = logits[label_ids]
        return int(torch.argmax(scores))  # first index on ties: the higher-ranked input wins

    def _rerank(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        """``set_size - 1``-ary max-heap over input positions; pop ``k`` winners, the rest keep their order."""
        n, c = len(cands), self.set_size - 1
        heap = list(range(n))

        def sift(root: int, size: int) -> None:
            while True:
                kids = [j for j in range(c * root + 1, c * root + 1 + c) if j < size]
                if not kids:
                    return
                group = [root] + kids
                best = group[self.choose(query, [cands[heap[g]] for g in group], stats)]
                if best == root:
                    return
                heap[root], heap[best] = heap[best], heap[root]
                root = best

        for root in range((n - 2) // c, -1, -1):
            sift(root, n)
        top: list[int] = []
        size = n
        while size and len(top) < min(self.k, n):
            top.append(heap[0])
            size -= 1
            heap[0] = heap[size]
            sift(0, size)
        rest = [i for i in range(n) if i not in set(top)]
        return top + rest
