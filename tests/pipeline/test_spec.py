"""Pipeline specs: the expression grammar over items, presets, the table form, and errors that name the bad part
and list what is allowed."""

from __future__ import annotations

import pytest

from rankstack.errors import BadInput
from rankstack.pipeline.spec import (PRESETS, CutSpec, FilterSpec, FusionSpec, PipelineSpec, RerankSpec,
                                     RetrieverSpec, parse_pipeline, pipeline_from_table, split_named)
from rankstack.spec import Item


def test_operators_precedence_and_the_tree():
    s = parse_pipeline("bm25 % 100 + dense % 50 >> first:depth=20 % 10")
    assert isinstance(s.source, FusionSpec) and s.source.item == Item("rrf")
    bm, de = s.source.inputs
    assert bm == PipelineSpec(RetrieverSpec(Item("bm25")), (CutSpec(100),))
    assert de.stages == (CutSpec(50),)
    assert s.stages == (RerankSpec(Item("first", (("depth", "20"),))), CutSpec(10))
    # a + b + c is one fusion of three; parentheses nest
    assert len(parse_pipeline("bm25 + dense + dense:model=hash:64").source.inputs) == 3
    nested = parse_pipeline("(bm25 + dense) + dense:model=hash:64")
    assert len(nested.source.inputs) == 2 and isinstance(nested.source.inputs[0].source, FusionSpec)
    # stage groups in parentheses flatten
    assert parse_pipeline("bm25 >> (first:depth=50 % 20 >> icr:depth=5)") == parse_pipeline(
        "bm25 >> first:depth=50 % 20 >> icr:depth=5")


@pytest.mark.parametrize("text", [
    "bm25", "dense", "hybrid-rrf", "hybrid-interp", "bm25:k1=1.2,b=0.75 % 1000",
    "rrf:rrf_k=10(bm25 % 100, dense:index=(binary:rescore=int8,multiplier=10) % 100) >> first:depth=20 % 10",
    "interp:alpha=0.3(dense, bm25) >> filter:lang=en;de >> cross-encoder:model=m,depth=50",
    "rrf(rrf(bm25, dense), dense:model=hash:64,batch_size=1)",
])
def test_canonical_text_round_trips(text):
    spec = parse_pipeline(text)
    assert parse_pipeline(str(spec)) == spec


def test_presets_and_typed_values():
    assert str(parse_pipeline("hybrid-rrf")) == PRESETS["hybrid-rrf"] == "rrf(bm25 % 1000, dense % 1000)"
    auto = parse_pipeline("hybrid-interp").source.item
    assert auto == Item("interp", (("alpha", "auto"),))
    s = parse_pipeline("dense:batch_size=8,normalize=false,index=pq:m=48")
    item = s.source.item
    assert item.get("batch_size") == 8 and item.get("normalize") is False
    assert item.get("index") == Item("pq")  # m=48 is the default: canonical index specs keep only the rest


@pytest.mark.parametrize("text, fragments", [
    ("", ["empty pipeline spec", "a pipeline is a retriever (bm25, dense, splade, maxsim, muvera, plaid)"]),
    ("first", ["a pipeline starts with a retriever or a fusion; 'first' is a reranker: put it after '>>'"]),
    ("bm25 >> dense", ["after '>>' comes a reranker, a filter or a cutoff; 'dense' is a retriever"]),
    ("bm25 >> frist", ["unknown component 'frist'", "rerankers: embedding, cross-encoder, icr, first"]),
    ("bm25:k2=1", ["retriever 'bm25' has no option 'k2'; its options are k1, b, threads", "at character 1"]),
    ("dense:index=(pq:m=x)", ["index spec 'pq:m=x': m='x' is not a valid int"]),
    ("dense:index=binary:rescore=int8,multiplier=10", ["has no option 'multiplier'",
                                                       "Nested specs with several options go in parentheses"]),
    ("rrf(bm25)", ["rrf fuses at least two inputs"]),
    ("interp(bm25, dense, dense:model=x)", ["interp fuses exactly two inputs"]),
    ("rrf:alpha=1(bm25, dense)", ["fusion 'rrf' has no option 'alpha'; its options are rrf_k"]),
    ("interp:alpha=2(bm25, dense)", ["alpha must lie in [0, 1]"]),
    ("rrf bm25", ["fusion 'rrf' needs its inputs in parentheses"]),
    ("bm25 dense", ["unexpected text"]),
    ("bm25(dense)", ["'bm25' is a retriever and takes no inputs"]),
    ("rrf:rrf_k=3", ["fusion 'rrf' needs its inputs in parentheses"]),
    ("bm25 % 0", ["a cutoff must be a positive integer, got 0"]),
    ("bm25 >> first:windw=3", ["reranker 'first' has no option 'windw'; its options are model, depth, window"]),
    ("bm25 >> filter", ["a filter needs conditions"]),
    ("hybrid-rrf:x=1", ["preset 'hybrid-rrf' takes no options; write it out to change them"]),
])
def test_errors_name_the_bad_part_and_what_is_allowed(text, fragments):
    with pytest.raises(BadInput) as exc:
        parse_pipeline(text)
    for f in fragments:
        assert f in str(exc.value), str(exc.value)


def test_named_rerankers_stand_for_kinds():
    from rankstack.rerank.factory import RerankerSpec

    names = {"mine": RerankerSpec.parse("first:model=smollm2,depth=20,window=10")}
    s = parse_pipeline("bm25 >> mine:depth=5", names)
    assert s.rerankers() == [RerankSpec(Item("mine", (("depth", "5"),)))]
    with pytest.raises(BadInput, match="reranker 'first' has no option 'temperature'"):
        parse_pipeline("bm25 >> mine:temperature=1", names)
    with pytest.raises(BadInput, match="unknown component 'mine'"):
        parse_pipeline("bm25 >> mine")


def test_table_form():
    spec = pipeline_from_table({"retrievers": ["bm25:k1=1.2", {"kind": "dense", "index": "binary:rescore=int8"}],
                                "fusion": "rrf", "rrf_k": 30, "retrieve_depth": 100, "reranker": "first",
                                "rerank_depth": 5, "k": 10})
    assert str(spec) == ("rrf:rrf_k=30(bm25:k1=1.2 % 100, dense:index=(binary:rescore=int8) % 100) >> "
                         "first:depth=5 % 10")
    one = pipeline_from_table({"retrievers": ["bm25"]})
    assert one == parse_pipeline("bm25")
    # request filters go before the reranker and multiply the fetch depth
    f = pipeline_from_table({"retrievers": ["bm25", "dense"], "retrieve_depth": 10, "reranker": "first"},
                            filters={"lang": ["en", "de"]})
    assert str(f) == "rrf(bm25 % 100, dense % 100) >> filter:lang=en;de >> first"
    assert isinstance(f.stages[0], FilterSpec)
    f2 = pipeline_from_table({"spec": "bm25 >> first % 5"}, filters={"lang": "en"})
    assert str(f2) == "bm25 >> filter:lang=en >> first % 5"
    for table, fragment in (({"retrievers": ["colbert"]}, "unknown component 'colbert'"),
                            ({"spec": "bm25", "retrievers": ["bm25"]}, "'spec' says everything"),
                            ({}, "give 'retrievers'"), ({"retrievers": ["bm25"], "depth": 3}, "unknown key 'depth'"),
                            ({"retrievers": ["bm25"], "reranker": "frist"}, "unknown reranker 'frist'"),
                            ({"retrievers": ["bm25 >> first"]}, "is not a retriever")):
        with pytest.raises(BadInput, match=fragment):
            pipeline_from_table(table)


def test_names_for_runs():
    assert split_named("hyb=rrf(bm25, dense)") == ("hyb", "rrf(bm25, dense)")
    assert split_named("bm25:k1=1") == (None, "bm25:k1=1")
    assert split_named("interp:alpha=0.3(a, b)") == (None, "interp:alpha=0.3(a, b)")
