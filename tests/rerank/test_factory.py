"""Reranker specs: parsing, validation against each class's signature, and builds that equal direct construction."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from rankstack.errors import BadInput  # noqa: E402
from rankstack.records import Candidate, Document, Query, Ranking  # noqa: E402
from rankstack.rerank.factory import ModelCache, RerankerSpec, build_reranker  # noqa: E402
from rankstack.rerank.llm import CausalLM, FirstReranker, ICRReranker  # noqa: E402
from tests.tiny_llm import save_tiny_llm  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_llm(tmp_path_factory.mktemp("tiny-llm")))


def ranking(n: int = 7) -> Ranking:
    words = "the flea life cycle is about weeks cats dogs eggs larva pupa adult".split()
    cands = tuple(Candidate(docid=f"d{i}", score=float(n - i),
                            document=Document(docid=f"d{i}", text=" ".join(words[i:i + 4 + i % 3])))
                  for i in range(n))
    return Ranking(query=Query(qid="q", text="flea life cycle"), candidates=cands)


def test_parse_converts_values_to_the_arguments_types():
    s = RerankerSpec.parse("setwise:model=smollm2,depth=20,reasoning=true,set_size=3")
    assert s.kind == "setwise" and s.model_name == "smollm2"
    assert dict(s.options) == {"depth": 20, "reasoning": True, "set_size": 3}
    icr = RerankerSpec.parse("icr:window=20,stride=10,calibration=plain,heads=18.7;18.8")
    assert dict(icr.options) == {"window": 20, "stride": 10, "calibration": "plain", "heads": ((18, 7), (18, 8))}
    assert RerankerSpec.parse("first").model_name == "smollm2"
    assert RerankerSpec.parse("embedding").model_name.endswith("all-MiniLM-L6-v2")
    table = RerankerSpec.from_config({"kind": "icr", "model": "gemma3-270m", "depth": 20, "heads": [[1, 2]]})
    assert table.model_name == "gemma3-270m" and dict(table.options) == {"depth": 20, "heads": ((1, 2),)}


@pytest.mark.parametrize("text, fragment", [
    ("monot5", "unknown reranker kind 'monot5'"),
    ("icr:temperature=2", "bad option 'temperature=2'; options are model, depth, passage_tokens, window"),
    ("icr:depth=many", "depth='many' is not a valid int"),
    ("setwise:reasoning=maybe", "reasoning='maybe' is not a valid bool"),
    ("icr:heads=18", "heads are layer.head pairs"),
    ("listwise:depth", "bad option 'depth'"),
])
def test_bad_specs_say_what_is_allowed(text, fragment):
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        RerankerSpec.parse(text)


def test_bad_tables_are_rejected():
    with pytest.raises(BadInput, match="has no option 'windw'"):
        RerankerSpec.from_config({"kind": "icr", "windw": 3})
    with pytest.raises(BadInput, match="with a 'kind'"):
        RerankerSpec.from_config({"model": "smollm2"})
    with pytest.raises(BadInput, match=r"depth=\[20\] should be a int"):
        RerankerSpec.from_config({"kind": "first", "depth": [20]})
    with pytest.raises(BadInput, match="reasoning=1 should be a bool"):
        RerankerSpec.from_config({"kind": "setwise", "reasoning": 1})
    # YAML/env values given as text convert to the argument's type
    assert dict(RerankerSpec.from_config({"kind": "first", "depth": "20"}).options) == {"depth": 20}


def test_built_rerankers_equal_direct_construction_and_share_one_model(tiny_dir):
    cache = ModelCache()
    icr = build_reranker(f"icr:model={tiny_dir},depth=5,passage_tokens=16", cache)
    first = build_reranker({"kind": "first", "model": tiny_dir, "depth": 5, "passage_tokens": 16}, cache)
    assert icr.llm is first.llm, "two rerankers on one model must share its weights"
    assert isinstance(icr, ICRReranker) and icr.depth == 5 and icr.passage_tokens == 16
    assert icr.name == f"icr({tiny_dir},depth=5,passage_tokens=16)"

    direct = CausalLM(tiny_dir)
    r = ranking()
    for built, ref in ((icr, ICRReranker(direct, depth=5, passage_tokens=16)),
                       (first, FirstReranker(direct, depth=5, passage_tokens=16))):
        got, want = built.rerank(r), ref.rerank(r)
        assert [c.docid for c in got.candidates] == [c.docid for c in want.candidates]
        assert [c.docid for c in got.candidates][5:] == ["d5", "d6"]  # below depth: untouched


def test_invalid_values_fail_at_build_with_the_classes_own_message(tiny_dir):
    with pytest.raises(BadInput, match="depth"):
        build_reranker(f"first:model={tiny_dir},depth=0")
    with pytest.raises(BadInput, match="use an offline model \\(smollm2, gemma3-270m\\)"):
        build_reranker("icr:model=no-such-model-anywhere")
