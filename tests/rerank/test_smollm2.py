"""End to end on the real offline SmolLM2-135M-Instruct and TREC DL19 candidates (slow: loads the model)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import shared_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm():
    from rankstack.errors import MissingExtra
    from rankstack.rerank.llm.runtime import CausalLM

    try:
        return CausalLM("smollm2")
    except MissingExtra as exc:
        pytest.skip(f"offline SmolLM2 unavailable: {exc}")


@pytest.fixture(scope="module")
def dl19():
    from rankstack.eval.datasets import load_trec_dl

    return load_trec_dl(shared_path("trec-dl", "dl19"))


def test_icr_two_passes_and_first_matches_greedy(llm, dl19):
    from rankstack.rerank.llm import FirstReranker, ICRReranker
    from rankstack.rerank.llm.runtime import ForwardStats as Stats

    for ranking in dl19.candidates[:2]:
        ranking = ranking.top(10)
        icr = ICRReranker(llm, passage_tokens=60)
        out = icr.rerank(ranking)
        assert icr.last_stats[0].forward_passes == 2
        assert sorted(out.docids) == sorted(ranking.docids)
        first = FirstReranker(llm, window=10, passage_tokens=60)
        top = first.rerank(ranking).docids[0]
        ids = first._prompt_ids(ranking.query.text, list(ranking.candidates[:10]), Stats())
        greedy = "[" + llm.generate(ids, 3)
        m = re.match(r"\[\s*([A-J])", greedy)
        assert m, f"greedy decoding did not start with an identifier: {greedy!r}"
        assert top == ranking.candidates[ord(m.group(1)) - ord("A")].docid
