"""LLM rerankers on config-built tiny models (plumbing: random weights say nothing about quality), checked against
independent computations: eager attention for ICR, a cache-free forward for FIRST."""

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
    icr = ICRReranker(llm, depth=6, passage_tokens=20)
    got = icr.score_window(r.query.text, list(r.candidates), ForwardStats())
    want = _eager_icr_scores(llm.model, tok, icr, list(r.candidates), r.query.text)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    out = icr.rerank(r)
    assert icr.last_stats[0].forward_passes == 2  # N candidates, one window: exactly two passes
    assert sorted(out.docids) == sorted(r.docids) and r.docids == [f"d{i}" for i in range(6)]  # input untouched
    order = sorted(range(6), key=lambda i: (-float(want[i]), i))
    assert out.docids == [f"d{i}" for i in order]
    none = ICRReranker(llm, depth=6, passage_tokens=20, calibration="none")
    none.rerank(r)
    assert none.last_stats[0].forward_passes == 1


def test_icr_windows_when_the_list_does_not_fit(tok):
    small = CausalLM(tiny_llama(len(tok)), tokenizer=tok, max_context=400)
    icr = ICRReranker(small, depth=30, passage_tokens=12, window=10, stride=5)
    out = icr.rerank(ranking(30))
    windows = len(sliding_windows(30, 10, 5))
    assert icr.last_stats[0].forward_passes == 2 * windows
    assert sorted(out.docids) == sorted(ranking(30).docids)


def test_first_orders_by_identifier_logits_of_a_plain_forward(llm, tok):
    r = ranking(5, seed=3)
    first = FirstReranker(llm, depth=5, window=5, passage_tokens=20)
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


def test_listwise_generation_windows_and_stats(llm):
    r = ranking(25)
    lw = ListwiseReranker(llm, depth=25, window=10, stride=5, passage_tokens=10)
    out = lw.rerank(r)
    s = lw.last_stats[0]
    windows = len(sliding_windows(25, 10, 5))
    assert windows <= s.forward_passes <= windows * (1 + 4 * 10 + 4)
    assert s.generated_tokens > 0 and s.repairs >= 0 and s.truncated_passages >= 0
    assert sorted(out.docids) == sorted(r.docids)
    assert [c.score for c in out.candidates] == sorted((c.score for c in out.candidates), reverse=True)


def test_setwise_heap_returns_top_k_then_the_rest(llm):
    r = ranking(12)
    sw = SetwiseReranker(llm, depth=12, k=3, set_size=3, passage_tokens=10)
    out = sw.rerank(r)
    assert sorted(out.docids) == sorted(r.docids)
    top = out.docids[:3]
    assert out.docids[3:] == [d for d in r.docids if d not in top]  # the rest keep their input order
    assert 0 < sw.last_stats[0].forward_passes <= 12 * 3
    reasoning = SetwiseReranker(llm, depth=6, k=2, set_size=3, passage_tokens=8, reasoning=True, max_think_tokens=6)
    reasoning.rerank(ranking(6))
    assert reasoning.last_stats[0].generated_tokens > 0


def test_bad_input(llm, tok):
    icr = ICRReranker(llm, depth=5)
    with pytest.raises(BadInput, match="no candidates"):
        icr.rerank(Ranking(query=Query(qid="q", text="x"), candidates=()))
    with pytest.raises(BadInput, match="carry no document text"):
        icr.rerank(Ranking(query=Query(qid="q", text="x"), candidates=(Candidate(docid="a", score=1.0),)))
    tiny = CausalLM(tiny_llama(len(tok)), tokenizer=tok, max_context=60)
    with pytest.raises(BadInput, match="do not fit"):
        FirstReranker(tiny, depth=20, window=20).rerank(ranking(20))
    with pytest.raises(BadInput, match="calibration must be"):
        ICRReranker(llm, calibration="bogus")
    with pytest.raises(BadInput, match="window 30 exceeds"):
        ListwiseReranker(llm, window=30)
    assert listwise_prompt(llm, "q", ["p"]).endswith("[")


def test_icr_head_selection_equals_summing_those_heads(llm):
    r = ranking(5, seed=1)
    everything = ICRReranker(llm, depth=5, passage_tokens=15, calibration="none", keep_signals=True)
    everything.score_window(r.query.text, list(r.candidates), ForwardStats())
    spans = everything.signals[0].query  # [layers, heads, docs]
    chosen = [(0, 1), (2, 3)]
    sub = ICRReranker(llm, depth=5, passage_tokens=15, calibration="none", heads=chosen)
    got = sub.score_window(r.query.text, list(r.candidates), ForwardStats())
    torch.testing.assert_close(got, spans[0, 1] + spans[2, 3], rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInput, match="outside the model"):
        ICRReranker(llm, heads=[(99, 0)])
