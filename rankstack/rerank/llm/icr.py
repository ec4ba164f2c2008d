"""In-context reranking (ICR; Chen et al., "Attention in Large Language Models Yields Efficient Zero-Shot
Re-Rankers", ICLR 2025): all candidates in one prompt, each scored by the attention the query pays to its tokens.

Two forward passes per window. Pass 1 runs the whole prompt with the content-free query ``N/A``; the cache is then
cut back to the end of the passages and pass 2 runs only the real query's part on top of it. Token scores are the
attention from the query-part positions (mean over them), summed over all layers and heads; a document scores the
sum over its tokens of (query - N/A) attention, leaving out tokens whose calibrated score is below mean - 2 std
within the document (the authors' "masked N/A calibration"). The main passes run on SDPA; only the attention rows
of the query positions are rebuilt from the cached queries and keys (see :class:`AttentionProbe`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rankstack.errors import BadInput, ContextOverflow
from rankstack.records import Candidate
from rankstack.rerank.llm.base import FLOOR_TOKENS, LLMReranker
from rankstack.rerank.llm.runtime import AttentionProbe, CausalLM, ForwardStats

logger = logging.getLogger(__name__)

__all__ = ["ICRReranker", "ICRSignals"]

INSTRUCTIONS = {
    "IE": "Please find information that are relevant to the following query in the paragraphs above.",
    "QA": "Please answer the following question based on the information in the paragraphs above.",
}
CALIBRATIONS = ("masked", "plain", "none")
ORDERS = ("retriever-last", "retriever-first")
QUERY_SPANS = ("after_docs", "query")


@dataclass
class ICRSignals:
    """Per-window attention detail for analysis: ``[layers, heads, docs]`` span sums for the query and N/A passes,
    and the window's candidate docids in prompt order."""

    docids: list[str]
    query: torch.Tensor
    calibration: torch.Tensor


class ICRReranker(LLMReranker):
    """``calibration``: "masked" (default, the authors' method), "plain" (subtract N/A scores) or "none" (one pass).
    ``query_span``: "after_docs" attends from every token after the passages (instruction, query, chat suffix), as
    the authors do; "query" from the query's own tokens only. ``window=None`` fits all ``depth`` candidates into
    one prompt when the context allows (by the prompt's exact token count, lowering the per-passage budget down to
    32 tokens where needed), else slides windows (``stride``, default half a window); ``overflow``: see
    :class:`~rankstack.rerank.llm.base.LLMReranker`. ``heads``: score with
    these ``(layer, head)`` pairs only (e.g. chosen on another dataset) instead of every layer and head.
    ``order``: where the first-stage retriever's best candidates sit in the prompt: ``retriever-last`` (default, as
    the authors run ICR with ``--reverse_doc_order``: the best passages last, nearest the query) or
    ``retriever-first``. ``attention``: ``auto`` (default: ``passage-block`` where one prompt holds every candidate,
    ``dense`` for sliding windows; passage-block scored at least as well as dense on DL19 at depth 20 and 100, at
    a fraction of the prefill), ``dense``, or ``passage-block`` (the prompt's first pass runs with each
    passage attending only to the instruction prefix and itself, the query part to everything; see
    :mod:`rankstack.rerank.llm.sparse_attention`), or ``duo``: only ``full_heads`` attend to everything, the other
    heads to the first ``sink_tokens`` and the last ``window_tokens`` tokens, in every pass; or ``topk``: the
    passages are prefilled densely, then the N/A and the query rows each attend to their ``topk_tokens`` best keys
    by ``topk_channels`` heavy channels (three passes: passages, N/A part, query part)."""

    name = "icr"

    def __init__(self, llm: CausalLM, *, passage_tokens: int = 100, window: int | None = None,
                 stride: int | None = None, calibration: str = "masked", query_span: str = "after_docs",
                 prompt_type: str = "IE", layers: list[int] | None = None,
                 heads: list[tuple[int, int]] | None = None, order: str = "retriever-last",
                 attention: str = "auto", full_heads: list[tuple[int, int]] | None = None, window_tokens: int = 128,
                 sink_tokens: int = 4, topk_tokens: int = 256, topk_channels: int = 8, keep_signals: bool = False,
                 overflow: str = "fallback"):
        super().__init__(llm, passage_tokens=passage_tokens, overflow=overflow)
        if order not in ORDERS:
            raise BadInput(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        from rankstack.rerank.llm.sparse_attention import ATTENTION_MODES

        if attention not in ("auto", *ATTENTION_MODES):
            raise BadInput(f"attention must be one of auto, {', '.join(ATTENTION_MODES)}, got {attention!r}")
        self.order, self.attention = order, attention
        self._block_prefill = attention == "passage-block"  # auto: set per query, where one prompt holds every passage
        self.head_layout = None
        if attention == "duo":
            from rankstack.rerank.llm.sparse_attention import HeadLayout

            if not full_heads:
                raise BadInput("attention=duo needs full_heads: the layer.head pairs that keep full attention (chosen "
                               "on other data, e.g. full_heads=18.7;18.8)")
            bad = [(lay, h) for lay, h in full_heads if not (0 <= lay < llm.num_layers and 0 <= h < llm.num_heads)]
            if bad:
                raise BadInput(f"full_heads {bad[:3]} are outside the model's {llm.num_layers} layers x "
                               f"{llm.num_heads} heads")
            if window_tokens <= 0 or sink_tokens < 0:
                raise BadInput("window_tokens must be positive and sink_tokens >= 0")
            self.head_layout = HeadLayout(frozenset(map(tuple, full_heads)), llm.num_heads, sink=sink_tokens,
                                          window=window_tokens)
        elif attention == "topk":
            from rankstack.rerank.llm.sparse_attention import TopKLayout

            if topk_tokens <= 0 or topk_channels <= 0:
                raise BadInput("topk_tokens and topk_channels must be positive")
            if calibration == "none":
                raise BadInput("attention=topk selects keys for the query rows over the passages' cache; it needs the "
                               "calibrated two-pass ICR (calibration=masked or plain)")
            self.head_layout = TopKLayout(tokens=topk_tokens, channels=topk_channels)
        if calibration not in CALIBRATIONS:
            raise BadInput(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if query_span not in QUERY_SPANS:
            raise BadInput(f"query_span must be one of {QUERY_SPANS}, got {query_span!r}")
        if prompt_type not in INSTRUCTIONS:
            raise BadInput(f"prompt_type must be one of {tuple(INSTRUCTIONS)}, got {prompt_type!r}")
        self.window, self.stride = window, stride
        self.calibration, self.query_span, self.prompt_type = calibration, query_span, prompt_type
        if heads is not None:
            if not heads:
                raise BadInput("heads must name at least one (layer, head) pair")
            bad = [(lay, h) for lay, h in heads if not (0 <= lay < llm.num_layers and 0 <= h < llm.num_heads)]
            if bad:
                raise BadInput(f"heads {bad[:3]} are outside the model's {llm.num_layers} layers x {llm.num_heads} "
                               f"heads")
            layers = sorted({lay for lay, _ in heads})
        self.layers = layers
        self.heads = heads
        self.keep_signals = keep_signals
        self.signals: list[ICRSignals] = []
        head, _, tail = llm.chat(None, "\x00").partition("\x00")
        self._head, self._tail = head, tail

    # ---- prompt --------------------------------------------------------------------------------------------

    def _docs_part(self, passages: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        ids = self.llm.encode(self._head + " Here are some paragraphs:")
        spans = []
        for i, p in enumerate(passages):
            ids += self.llm.encode("\n\n")
            doc = self.llm.encode(f"[{i + 1}] {p}")
            spans.append((len(ids), len(ids) + len(doc)))
            ids += doc
        return ids, spans

    def _query_part(self, query: str) -> tuple[list[int], int, int]:
        """Token ids after the passages, and the ``[start, end)`` of the query text inside them."""
        pre = self.llm.encode("\n\n" + INSTRUCTIONS[self.prompt_type] + "\n\nQuery:")
        q = self.llm.encode(" " + query.strip())
        return pre + q + self.llm.encode(self._tail), len(pre), len(pre) + len(q)

    def _overhead(self, query: str) -> int:
        return len(self._docs_part([])[0]) + len(self._query_part(query)[0]) + 8

    # ---- scoring -------------------------------------------------------------------------------------------

    def _pass(self, part: list[int], start: int, q_range: tuple[int, int], q_len: int,
              cache, spans=None) -> tuple[AttentionProbe, object]:
        """Forward ``part``; probe the query part, which starts at absolute position ``start`` and has ``q_len``
        tokens (``q_range`` is the query text inside it). ``spans``: the passages' token spans, for a
        passage-block prefill of a whole prompt."""
        from rankstack.rerank.llm.sparse_attention import PassageLayout

        lo, hi = q_range if self.query_span == "query" else (0, q_len)
        probe = AttentionProbe(query_positions=list(range(start + lo, start + hi)), layers=self.layers)
        layout = (PassageLayout.from_spans(len(part), spans, start)
                  if spans is not None and self._block_prefill else self.head_layout)
        _, cache = self.llm.forward(part, cache, probe=probe, layout=layout)
        return probe, cache

    def _prompt_order(self, cands: list[Candidate]) -> list[Candidate]:
        return cands[::-1] if self.order == "retriever-last" else cands

    def _build(self, query: str, prompt: list[Candidate], stats: ForwardStats) -> tuple | None:
        """The passages' part of the prompt holding ``prompt`` (in prompt order), ``(token ids, spans)``, with the
        per-passage budget fitted to the context by exact count (both passes: the N/A part and the query part each
        follow the passages); None when not even the floor fits."""
        q_len = len(self._query_part(query)[0])
        after = q_len if self.calibration == "none" else max(q_len, len(self._query_part("N/A")[0]))
        budget = self._fit_budget(len(prompt), self._overhead(query) + self._overhead("N/A"))
        return self._fit(lambda b, st: self._docs_part(self._passages(prompt, st, b)), len(prompt), budget, after,
                         stats)

    def score_window(self, query: str, cands: list[Candidate], stats: ForwardStats, built=None) -> torch.Tensor:
        """ICR scores for one window, in the order of ``cands`` (higher is more relevant); the prompt holds them in
        ``self.order``. ``built``: the window's prompt from :meth:`_build`, when already made."""
        prompt = self._prompt_order(cands)
        if built is None:
            built = self._build(query, prompt, stats)
            if built is None:
                raise ContextOverflow(f"{len(cands)} passages do not fit the model's {self.llm.context}-token context "
                                      f"even at {FLOOR_TOKENS} tokens each; lower the window")
        scores = self._score_prompt(query, prompt, stats, built)
        return scores.flip(0) if self.order == "retriever-last" else scores

    def _score_prompt(self, query: str, cands: list[Candidate], stats: ForwardStats, built: tuple) -> torch.Tensor:
        docs_ids, spans = built
        q_part, q_lo, q_hi = self._query_part(query)
        start = len(docs_ids)
        if self.calibration == "none":
            probe, _ = self._pass(docs_ids + q_part, start, (q_lo, q_hi), len(q_part), None, spans)
            calib = None
        else:
            na_part, na_lo, na_hi = self._query_part("N/A")
            if self.attention == "topk":  # the passages densely, then the N/A rows over them with top-k keys
                _, cache = self.llm.forward(docs_ids)
                calib, cache = self._pass(na_part, start, (na_lo, na_hi), len(na_part), cache)
            else:
                calib, cache = self._pass(docs_ids + na_part, start, (na_lo, na_hi), len(na_part), None, spans)
            cache.crop(start - cache.get_seq_length())  # drop the N/A part; keep the passages' keys and values
            cache = self.llm.compact(cache)  # held as codes until the query pass under kv=int4|int2
            probe, _ = self._pass(q_part, start, (q_lo, q_hi), len(q_part), cache)
        tok = self._aggregate(probe, start)  # [start]: summed over the chosen layers and heads
        if self.keep_signals:
            self.signals.append(ICRSignals(docids=[c.docid for c in cands], query=probe.span_sums(spans),
                                           calibration=calib.span_sums(spans) if calib is not None else None))
        scores = torch.empty(len(cands))
        tok_na = self._aggregate(calib, start) if calib is not None else None
        for i, (s, e) in enumerate(spans):
            t = tok[s:e]
            if tok_na is None:
                scores[i] = t.sum()
                continue
            diff = t - tok_na[s:e]
            if self.calibration == "masked" and diff.numel() > 1:
                keep = diff > diff.mean() - 2 * diff.std()
                diff = diff * keep
            scores[i] = diff.sum()
        return scores

    def _aggregate(self, probe: AttentionProbe, start: int) -> torch.Tensor:
        rows = probe.stacked()[..., :start]  # [layers captured, heads, keys]
        if self.heads is None:
            return rows.sum(dim=(0, 1))
        index = {lay: i for i, lay in enumerate(sorted(probe.rows))}
        return sum(rows[index[lay], h] for lay, h in self.heads)

    @staticmethod
    def _ranked(scores: torch.Tensor) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))

    def _rank_window(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        return self._ranked(self.score_window(query, cands, stats))

    def layout(self, query: str, cands: list[Candidate], stats: ForwardStats | None = None) -> tuple[str, tuple | None]:
        """How ``cands`` are laid out for ``query`` under the model's context, decided without running the model:
        ``("one prompt", built)``, ``("shrunk", built)`` (one prompt, passages cut further to fit) or
        ``("windows", None)``; ``built``: the passages' token ids and spans. A fixed ``window`` smaller than the list
        gives ``("windows", None)``."""
        stats = stats if stats is not None else ForwardStats()
        if self.window is not None and self.window < len(cands):
            return "windows", None
        room = (self.llm.context - self._overhead(query) - self._overhead("N/A")) // max(1, len(cands))
        before = stats.shrunk_prompts
        built = (self._build(query, self._prompt_order(cands), stats)
                 if room >= min(FLOOR_TOKENS, self.passage_tokens) else None)
        if built is None:
            return "windows", None
        return ("shrunk" if stats.shrunk_prompts > before else "one prompt"), built

    def _rerank(self, query: str, cands: list[Candidate], stats: ForwardStats) -> list[int]:
        window = self.window
        if window is None:  # one prompt when the whole list fits (exact count) at >= FLOOR_TOKENS per passage
            _, built = self.layout(query, cands, stats)
            if built is not None:
                if self.attention == "auto":  # passage-block prefill where one prompt holds every candidate
                    self._block_prefill = True
                return self._ranked(self.score_window(query, cands, stats, built))
            window = max(1, (self.llm.context // 2) // (self.passage_tokens + 8))
            stats.window_fallbacks += 1
            self._note(f"{len(cands)} candidates do not fit one {self.llm.context}-token prompt at >= "
                       f"{min(FLOOR_TOKENS, self.passage_tokens)} tokens per passage; ranked in windows of {window}")
        stride = self.stride or max(1, window // 2)
        if self.attention == "auto":  # passage-block prefill where one prompt holds every candidate, dense windows
            self._block_prefill = window >= len(cands)
        return self._slide(cands, window, stride, lambda w: self._rank_window(query, w, stats))
