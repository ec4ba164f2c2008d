"""LLM rerankers on config-built tiny models (plumbing: random weights say nothing about quality), checked against
independent computations: eager attention for ICR, a cache-free forward for FIRST; and on a stub model with a known
preference (tests/stub_llm.py), to check that the listwise windows and the setwise heap really put the best first
and count their repairs and truncations exactly."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from rankstack.errors import BadInput  # noqa: E402
from rankstack.records import Candidate, Document, Query, Ranking  # noqa: E402
from rankstack.rerank.llm.base import parse_permutation, sliding_windows  # noqa: E402
from rankstack.rerank.llm.icr import ICRReranker  # noqa: E402
from rankstack.rerank.llm.listwise import FirstReranker, ListwiseReranker, listwise_prompt  # noqa: E402
from rankstack.rerank.llm.runtime import CausalLM, ForwardStats  # noqa: E402
from rankstack.rerank.llm.setwise import SetwiseReranker, parse_answer  # noqa: E402
from tests.stub_llm import PreferenceLLM  # noqa: E402
from tests.tiny_llm import tiny_llama, tiny_tokenizer  # noqa: E402

WORDS = "the flea life cycle is about weeks cats dogs eggs larva pupa adult".split()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llm(tok):
    return CausalLM(tiny_llama(len(tok)), tokenizer=tok)


def ranking(n: int, seed: int = 0) -> Ranking:
    g = torch.Generator().manual_seed(seed)
    cands = []
    for i in range(n):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (int(torch.randint(3, 12, (1,), generator=g)),),
                                                         generator=g)]
        cands.append(Candidate(docid=f"d{i}", score=float(n - i), document=Document(docid=f"d{i}", text=" ".join(words))))
    return Ranking(query=Query(qid="q1", text="flea life cycle"), candidates=tuple(cands))


def test_permutation_parsing_repairs():
    assert parse_permutation("[C] > [A] > [B]", 3) == ([2, 0, 1], 0)
    assert parse_permutation("[C] > [C] > [A]", 3) == ([2, 0, 1], 2)  # one duplicate dropped, B appended
    assert parse_permutation("C > B > A", 3) == ([2, 1, 0], 0)  # no brackets
    assert parse_permutation("[Z] > [b]", 3) == ([1, 0, 2], 3)  # out of range, lower case, two missing
    assert parse_permutation("I cannot rank these.", 2) == ([0, 1], 3)  # "I" is out of range; A and B missing
    assert parse_permutation("", 4) == ([0, 1, 2, 3], 4)


def test_sliding_windows_cover_the_list_bottom_up():
    assert sliding_windows(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40),
                                            (10, 30), (0, 20)]
    assert sliding_windows(15, 20, 10) == [(0, 15)]
    assert sliding_windows(25, 20, 10) == [(5, 25), (0, 15)]


def test_parse_answer():
    assert parse_answer("<think>B looks good</think><answer>[C]</answer>", 3) == 2
    assert parse_answer("<think>...</think><answer> b </answer>", 3) == 1
    assert parse_answer("I think [A] and then [B]", 3) == 1  # last mention wins without an answer tag
    assert parse_answer("<answer>[Q]</answer>", 3) is None


def _eager_icr_scores(model, tok, icr, cands, query):
    """ICR from eager attention over full prompts, no cache: the independent baseline."""
    eager = type(model)(model.config.__class__(**{**model.config.to_dict(), "_attn_implementation": "eager"}))
    eager.load_state_dict(model.state_dict())
    eager.config._attn_implementation = "eager"
    eager.eval()
    stats = ForwardStats()
    budget = icr._fit_budget(len(cands), icr._overhead(query) + icr._overhead("N/A"))
    docs, spans = icr._docs_part(icr._passages(cands, stats, budget))

    def token_scores(q):
        part, _, _ = icr._query_part(q)
        ids = docs + part
        with torch.no_grad():
            att = eager(torch.tensor([ids]), output_attentions=True).attentions
        rows = torch.stack([a[0][:, len(docs):, :].mean(dim=1) for a in att])  # [layers, heads, L]
        return rows.sum(dim=(0, 1))[: len(docs)]

    t, na = token_scores(query), token_scores("N/A")
    out = []
    for s, e in spans:
        d = t[s:e] - na[s:e]
        d = d * (d > d.mean() - 2 * d.std())
        out.append(float(d.sum()))
    return torch.tensor(out)


def test_icr_two_passes_and_matches_eager_attention(llm, tok):
    r = ranking(6)
    icr = ICRReranker(llm, passage_tokens=20, order="retriever-first")
    got = icr.score_window(r.query.text, list(r.candidates), ForwardStats())
    want = _eager_icr_scores(llm.model, tok, icr, list(r.candidates), r.query.text)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the default, the authors' order: the prompt holds the candidates reversed (best last), scores map back
    last = ICRReranker(llm, passage_tokens=20)
    want_last = _eager_icr_scores(llm.model, tok, last, list(r.candidates)[::-1], r.query.text).flip(0)
    torch.testing.assert_close(last.score_window(r.query.text, list(r.candidates), ForwardStats()), want_last,
                               rtol=1e-4, atol=1e-5)
    out = icr.rerank(r)
    assert icr.last_stats[0].forward_passes == 2  # N candidates, one window: exactly two passes
    assert sorted(out.docids) == sorted(r.docids) and r.docids == [f"d{i}" for i in range(6)]  # input untouched
    order = sorted(range(6), key=lambda i: (-float(want[i]), i))
    assert out.docids == [f"d{i}" for i in order]
    none = ICRReranker(llm, passage_tokens=20, calibration="none")
    none.rerank(r)
    assert none.last_stats[0].forward_passes == 1


def test_icr_windows_when_the_list_does_not_fit(tok):
    small = CausalLM(tiny_llama(len(tok)), tokenizer=tok, max_context=400)
    icr = ICRReranker(small, passage_tokens=12, window=10, stride=5)
    out = icr.rerank(ranking(30))
    windows = len(sliding_windows(30, 10, 5))
    assert icr.last_stats[0].forward_passes == 2 * windows
    assert sorted(out.docids) == sorted(ranking(30).docids)


def test_first_orders_by_identifier_logits_of_a_plain_forward(llm, tok):
    r = ranking(5, seed=3)
    first = FirstReranker(llm, window=5, passage_tokens=20)
    out = first.rerank(r)
    assert first.last_stats[0].forward_passes == 1
    ids = first._prompt_ids(r.query.text, list(r.candidates), ForwardStats())
    assert tok.decode(ids).endswith("<|assistant|>[")
    with torch.no_grad():
        logits = llm.model(torch.tensor([ids])).logits[0, -1]
    letter = [tok.encode(c, add_special_tokens=False)[0] for c in "ABCDE"]
    order = sorted(range(5), key=lambda i: (-float(logits[letter[i]]), i))
    assert out.docids == [f"d{i}" for i in order]
    # the top-1 is the identifier greedy decoding picks when restricted to identifiers
    assert out.docids[0] == f"d{int(torch.argmax(logits[letter]))}"


def preference_ranking(n: int, seed: int = 0, long_every: int = 4) -> Ranking:
    """``n`` candidates whose passages say ``rel<N>`` with N a shuffled 0..n-1; every ``long_every``-th passage
    is long (60 words), the others short (6 words)."""
    g = torch.Generator().manual_seed(seed)
    rel = torch.randperm(n, generator=g).tolist()
    cands = []
    for i in range(n):
        filler = " ".join(["word"] * (60 if i % long_every == 0 else 6))
        cands.append(Candidate(docid=f"d{i}", score=float(n - i),
                               document=Document(docid=f"d{i}", text=f"passage {i} rel{rel[i]} {filler}")))
    return Ranking(query=Query(qid="q", text="which is best"), candidates=tuple(cands))


def _rel(c: Candidate) -> int:
    return PreferenceLLM.relevance(c.document.text)


def _windows_by_hand(r: Ranking, window: int, stride: int, budget: int) -> tuple[list[str], int]:
    """RankGPT's sliding windows, bottom-up, each window put in true preference order; and how many passages
    longer than ``budget`` stub tokens the windows held (each is cut once per window it sits in)."""
    order = list(r.candidates)
    end, cut = len(order), 0
    while True:
        start = max(0, end - window)
        cut += sum(len(PreferenceLLM().encode(" ".join(c.document.text.split()))) > budget for c in order[start:end])
        order[start:end] = sorted(order[start:end], key=lambda c: -_rel(c))
        if start == 0:
            return [c.docid for c in order], cut
        end -= stride


def test_listwise_windows_put_the_best_first_and_count_repairs_and_truncations():
    llm = PreferenceLLM(drop_last=True)
    r = preference_ranking(25)
    lw = ListwiseReranker(llm, window=10, stride=5, passage_tokens=20)
    out = lw.rerank(r)
    want, cut = _windows_by_hand(r, 10, 5, budget=20)
    assert out.docids == want
    by_rel = [c.docid for c in sorted(r.candidates, key=lambda c: -_rel(c))]
    assert out.docids[:5] == by_rel[:5]  # what slides up: the global top (window - stride)
    windows = sliding_windows(25, 10, 5)
    s = lw.last_stats[0]
    assert s.repairs == len(windows)  # each answer left out one identifier
    assert cut > len(windows) and s.truncated_passages == cut  # long passages cut once per window they sit in
    assert s.forward_passes == len(windows) + s.generated_tokens and s.generated_tokens > 0
    assert [c.score for c in out.candidates] == sorted((c.score for c in out.candidates), reverse=True)


def test_first_orders_each_window_by_the_identifier_logits():
    llm = PreferenceLLM()
    r = preference_ranking(8)
    out = FirstReranker(llm, window=8, passage_tokens=200).rerank(r)
    assert out.docids == [c.docid for c in sorted(r.candidates, key=lambda c: -_rel(c))]
    assert llm.calls == ["logits"]


def test_setwise_heap_pops_the_true_top_k_then_keeps_the_input_order():
    llm = PreferenceLLM()
    r = preference_ranking(12, seed=3)
    sw = SetwiseReranker(llm, k=3, set_size=3, passage_tokens=200)
    out = sw.rerank(r)
    by_rel = [c.docid for c in sorted(r.candidates, key=lambda c: -_rel(c))]
    assert out.docids[:3] == by_rel[:3]
    assert out.docids[3:] == [d for d in r.docids if d not in by_rel[:3]]
    s = sw.last_stats[0]
    assert s.forward_passes == len(llm.calls) and 0 < s.forward_passes <= 12 * 3 and s.repairs == 0
    # reasoning: the <answer> tag decides; an unusable answer falls back to the logits, counted as a repair
    ok = SetwiseReranker(PreferenceLLM(think="ok"), k=3, set_size=3, passage_tokens=200, reasoning=True)
    assert ok.rerank(r).docids[:3] == by_rel[:3] and ok.last_stats[0].repairs == 0
    bad_llm = PreferenceLLM(think="garbage")
    bad = SetwiseReranker(bad_llm, k=3, set_size=3, passage_tokens=200, reasoning=True)
    assert bad.rerank(r).docids[:3] == by_rel[:3]
    assert bad.last_stats[0].repairs == bad_llm.calls.count("generate") > 0
    assert bad_llm.calls.count("logits") == bad_llm.calls.count("generate")


def test_bad_input(llm, tok):
    icr = ICRReranker(llm)
    with pytest.raises(BadInput, match="no candidates"):
        icr.rerank(Ranking(query=Query(qid="q", text="x"), candidates=()))
    with pytest.raises(BadInput, match="carry no document text"):
        icr.rerank(Ranking(query=Query(qid="q", text="x"), candidates=(Candidate(docid="a", score=1.0),)))
    tiny = CausalLM(tiny_llama(len(tok)), tokenizer=tok, max_context=60)
    with pytest.raises(BadInput, match="do not fit"):
        FirstReranker(tiny, window=20).rerank(ranking(20))
    with pytest.raises(BadInput, match="calibration must be"):
        ICRReranker(llm, calibration="bogus")
    with pytest.raises(BadInput, match="window 30 exceeds"):
        ListwiseReranker(llm, window=30)
    assert listwise_prompt(llm, "q", ["p"]).endswith("[")


def test_icr_head_selection_equals_summing_those_heads(llm):
    r = ranking(5, seed=1)
    everything = ICRReranker(llm, passage_tokens=15, calibration="none", keep_signals=True)
    everything.score_window(r.query.text, list(r.candidates), ForwardStats())
    spans = everything.signals[0].query  # [layers, heads, docs]
    chosen = [(0, 1), (2, 3)]
    sub = ICRReranker(llm, passage_tokens=15, calibration="none", heads=chosen)
    got = sub.score_window(r.query.text, list(r.candidates), ForwardStats())
    at = {d: i for i, d in enumerate(everything.signals[0].docids)}  # signals are in prompt order (best last)
    order = torch.tensor([at[c.docid] for c in r.candidates])
    torch.testing.assert_close(got, (spans[0, 1] + spans[2, 3])[order], rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInput, match="outside the model"):
        ICRReranker(llm, heads=[(99, 0)])
