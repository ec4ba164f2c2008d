"""A stub LLM with a known preference, for testing what rerankers do with a model's answers (the sliding windows,
the setwise heap, answer parsing and repairs) independently of any real model.

Passages carry a marker ``rel<N>``; the stub prefers higher N. It speaks the runtime's interface (encode, decode,
truncate, chat, generate, next_token_logits, stats) over a word-level vocabulary, and reads the passages back from
the prompt the reranker built: ``[A] text`` lines (listwise/FIRST) or ``Passage [A]: text`` blocks (setwise).
"""

from __future__ import annotations

import re
import threading

import torch

from rankstack.rerank.llm.runtime import ForwardStats

_TOKEN = re.compile(r"\s+|[A-Za-z0-9]+|[^\sA-Za-z0-9]")


class PreferenceLLM:
    """``drop_last``: listwise answers leave out their last identifier (one repair per window);
    ``think``: setwise reasoning answers with ``<answer>[X]</answer>`` ("ok"), or with nothing usable ("garbage")."""

    def __init__(self, *, context: int = 100_000, drop_last: bool = False, think: str = "ok"):
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self.context = context
        self.drop_last = drop_last
        self.think = think
        self.stats = ForwardStats()
        self.lock = threading.RLock()
        self.calls: list[str] = []

    # -- text --
    def _id(self, tok: str) -> int:
        if tok not in self.vocab:
            self.vocab[tok] = len(self.words)
            self.words.append(tok)
        return self.vocab[tok]

    def encode(self, text: str) -> list[int]:
        return [self._id(t) for t in _TOKEN.findall(text)]

    def decode(self, ids) -> str:
        return "".join(self.words[i] for i in ids)

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        words = [t for t in _TOKEN.findall(text)]
        if len(words) <= max_tokens:
            return text, False
        return "".join(words[:max_tokens]), True

    def chat(self, system, user, assistant_prefix: str = "") -> str:
        return (f"<sys>{system}</sys>" if system else "") + f"<user>{user}</user><assistant>" + assistant_prefix

    def reset_stats(self) -> ForwardStats:
        old, self.stats = self.stats, ForwardStats()
        return old

    # -- the preference --
    @staticmethod
    def relevance(text: str) -> int:
        m = re.search(r"rel(\d+)", text)
        return int(m.group(1)) if m else -1

    def _passages(self, prompt: str) -> dict[str, int]:
        """identifier letter -> relevance, from the prompt text."""
        found = re.findall(r"Passage \[([A-Z])\]: (.*?)(?=\n\nPassage \[|\n\nOutput|\n\nThink|$)", prompt, re.S)
        if not found:
            found = re.findall(r"^\[([A-Z])\] (.*)$", prompt, re.M)
        return {letter: self.relevance(text) for letter, text in found}

    def generate(self, ids, max_new_tokens: int, *, cache=None, stop=()) -> str:
        prompt = self.decode(ids)
        self.calls.append("generate")
        passages = self._passages(prompt)
        best_first = sorted(passages, key=lambda x: (-passages[x], x))
        if "<think>" in prompt:
            text = (f"looks like {best_first[0]}</think><answer>[{best_first[0]}]</answer>" if self.think == "ok"
                    else "I am not sure at all")
        else:
            shown = best_first[:-1] if self.drop_last and len(best_first) > 1 else best_first
            text = "]>[".join(shown) + "]"  # 4 tokens per identifier, as real BPEs spend about
        out = self.encode(text)[:max_new_tokens]
        self.stats.forward_passes += 1 + len(out)
        self.stats.prompt_tokens += len(ids)
        self.stats.generated_tokens += len(out)
        return self.decode(out)

    def next_token_logits(self, ids, cache=None) -> torch.Tensor:
        prompt = self.decode(ids)
        self.calls.append("logits")
        passages = self._passages(prompt)
        logits = torch.full((len(self.words) + 64,), -100.0)
        for letter, rel in passages.items():
            logits[self._id(letter)] = float(rel)
        self.stats.forward_passes += 1
        self.stats.prompt_tokens += len(ids)
        return logits
