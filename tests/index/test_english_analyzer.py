"""The pure-Python query analyzer against Lucene's (Pyserini's default English analyzer) on every query of the test
collections and every ASCII document of SciFact and NFCorpus, and Porter's stemmer on examples of its paper (their
stems as Lucene's PorterStemFilter gives them)."""

from __future__ import annotations

import json

import pytest

from rankstack.index.english_analyzer import analyze, porter_stem


@pytest.mark.parametrize("word,stem", [
    ("caresses", "caress"), ("ponies", "poni"), ("ties", "ti"), ("cats", "cat"), ("feed", "feed"),
    ("agreed", "agre"), ("plastered", "plaster"), ("motoring", "motor"), ("sing", "sing"), ("conflated", "conflat"),
    ("troubled", "troubl"), ("sized", "size"), ("hopping", "hop"), ("falling", "fall"), ("hissing", "hiss"),
    ("filing", "file"), ("happy", "happi"), ("relational", "relat"), ("conditional", "condit"),
    ("rational", "ration"), ("digitizer", "digit"), ("generalization", "gener"), ("oscillators", "oscil"),
    ("hopefulness", "hope"), ("electrical", "electr"), ("goodness", "good"), ("adjustment", "adjust"),
    ("adoption", "adopt"), ("controll", "control"), ("roll", "roll"), ("probate", "probat"), ("rate", "rate"),
    ("cease", "ceas"), ("is", "is"), ("analogi", "analog"), ("possibli", "possibl")])
def test_porter_on_its_papers_examples_and_lucenes_departures(word, stem):
    assert porter_stem(word) == stem


def test_non_ascii_text_is_left_to_lucene():
    assert analyze("β-amyloid in Alzheimer’s disease") is None
    assert analyze("x" * 256) is None  # longer than Lucene's token limit
    assert analyze("") == [] and analyze("the of and") == []


def _texts(data_dir):
    for name in ("scifact", "nfcorpus"):
        folder = data_dir / "beir" / name
        for line in open(folder / "queries.jsonl", encoding="utf-8"):
            yield json.loads(line)["text"]
        for line in open(folder / "corpus.jsonl", encoding="utf-8"):
            d = json.loads(line)
            yield f"{d.get('title', '')} {d['text']}".strip()
    for line in open(data_dir / "trec-dl" / "dl19" / "topics.dl19-passage.txt", encoding="utf-8"):
        yield line.rstrip("\n").split("\t", 1)[1]


def test_equals_lucenes_analyzer_on_every_query_and_ascii_document():
    pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
    from tests.conftest import shared_path

    from rankstack.index.bm25_matrix import _analyzer

    data = shared_path("beir", "scifact").parents[1]
    lucene = _analyzer()
    tricky = ["U.S. e.g. 3.14 1,000,000 don't John's JOHN'S a_b _x_ __ x:y 1:2 a.1 1.a v1.2b 2;3 a'b'c "
              "foo--bar (x) [y] {z} <w> \"q\" x/y x@y.com http://a.b/c?d=1&e=2 #tag $5 50% 3rd C++ C# .NET"]
    compared = skipped = 0
    for text in [*tricky, *_texts(data)]:
        mine = analyze(text)
        if mine is None:
            skipped += 1
            continue
        assert mine == list(lucene.analyze(text)), text[:200]
        compared += 1
    assert compared > 10_000, (compared, skipped)  # queries and ASCII documents of SciFact, NFCorpus and DL19
