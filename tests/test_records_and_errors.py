from __future__ import annotations

import dataclasses
import sys

import pytest

from rankstack._optional import require
from rankstack.errors import MissingExtra
from rankstack.records import Document, Query, Ranking, Run, TopK


def test_records_are_frozen_and_keyword_only():
    q = Query(qid="1", text="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.text = "y"
    with pytest.raises(TypeError):
        Query("1", "x")
    d = Document(docid="a", text="body", title="T", metadata={"k": 1})
    with pytest.raises(TypeError):
        d.metadata["k"] = 2
    assert d.contents == "T body" and Document(docid="b", text="only").contents == "only"


def test_ranking_order_and_immutability():
    r = Ranking.from_scores(Query(qid="q", text="t"), {"a": 1.0, "c": 1.0, "b": 2.0})
    assert r.docids == ["b", "c", "a"]  # score desc, then docid desc (trec_eval)
    assert r.top(1).docids == ["b"] and r.docids == ["b", "c", "a"]
    run = Run.from_rankings([r])
    with pytest.raises(TypeError):
        run.scores["q"]["z"] = 1.0


def test_topk_shape_check():
    import numpy as np

    with pytest.raises(ValueError, match="equal 2-D shapes"):
        TopK(scores=np.zeros((2, 3)), ids=np.zeros((2, 2)))


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'rankstack\[cpu\]'"):
        require("faiss")
    monkeypatch.setitem(sys.modules, "pyserini", None)
    with pytest.raises(MissingExtra, match=r"rankstack\[lucene\]"):
        from rankstack.index.jvm import import_pyserini

        import_pyserini()
