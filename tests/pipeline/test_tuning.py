"""alpha=auto: chosen on the dev split (or by cross-validation), never on the reported queries; the reported run is
the interpolation of the inputs' runs at the chosen alpha."""

from __future__ import annotations

import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("faiss", reason="needs rankstack[cpu]")

from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.eval.metrics import evaluate  # noqa: E402
from rankstack.eval.runner import run_pipelines  # noqa: E402
from rankstack.records import Document, Run  # noqa: E402
from rankstack.pipeline.fusion import interpolate  # noqa: E402
from tests.conftest import write_beir  # noqa: E402

SPEC = "interp:alpha=auto(dense:model=hash:32 % 50, bm25 % 50)"
WORDS = "cat dog wolf fish python rust memory safety language purr loyal bird tree river stone cloud rain".split()


@pytest.fixture()
def folder(tmp_path):
    docs = [Document(docid=f"d{i:02d}", text=" ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(6)))
            for i in range(40)]
    queries = {f"q{i}": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3)) for i in range(12)}
    test = {f"q{i}": {f"d{(i * 3) % 40:02d}": 1, f"d{(i * 11) % 40:02d}": 1} for i in range(6)}
    dev = {f"q{i}": {f"d{(i * 3) % 40:02d}": 1, f"d{(i * 13) % 40:02d}": 1} for i in range(6, 12)}
    path = write_beir(tmp_path / "toy", docs, queries, test)
    write_beir(path, docs, queries, dev, split="dev")
    return path


def test_alpha_tuned_on_dev_and_applied_to_test(folder, tmp_path):
    ds, results, ws = run_pipelines(folder, [f"hyb={SPEC}"], index_root=tmp_path / "ix", k=50)
    res = results["hyb"]
    assert res.stats["tuned_on"] == "dev"
    # independent: both inputs retrieved directly, every grid alpha scored on dev, the best applied to test
    dev = load_beir(folder, "dev")

    def runs(queries):
        return (Run.from_rankings(ws.retriever("dense:model=hash:32").retrieve(queries, 50)),
                Run.from_rankings(ws.retriever("bm25").retrieve(queries, 50)))

    dense_dev, bm25_dev = runs(list(dev.queries.values()))
    scores = {a / 20: evaluate(interpolate(dense_dev, bm25_dev, alpha=a / 20), dev.qrels, ["nDCG@10"]).aggregate[
        "nDCG@10"] for a in range(21)}
    best = max(scores.values())
    alpha = min(a for a, v in scores.items() if v >= best - 1e-12)
    assert res.stats["alpha"] == alpha
    dense_test, bm25_test = runs(list(ds.queries.values()))
    want = interpolate(dense_test, bm25_test, alpha=alpha)
    assert {q: res.run.ranked(q) for q in res.run.qids} == {q: want.ranked(q)[:50] for q in want.qids}


def test_without_a_dev_split_alpha_comes_from_cross_validation(folder, tmp_path):
    (folder / "qrels" / "dev.tsv").unlink()
    _, results, _ = run_pipelines(folder, [SPEC], index_root=tmp_path / "ix", k=50)
    res = results[SPEC]
    assert res.stats["tuned_on"] == "2-fold CV" and len(res.stats["alphas"]) == 2
    assert set(res.run.qids) == {f"q{i}" for i in range(6)}  # every evaluated query ran, each with its fold's alpha


def test_nested_auto_fusions_are_tuned_inner_first(folder, tmp_path):
    """interp:alpha=auto(interp:alpha=auto(a, b), c): the inner alpha is chosen on dev, then the outer one on dev
    with the inner fusion fixed; the reported run is the two interpolations at those alphas."""
    inner = "interp:alpha=auto(dense:model=hash:32 % 50, bm25 % 50)"
    spec = f"interp:alpha=auto({inner}, dense:model=hash:16 % 50)"
    ds, results, ws = run_pipelines(folder, [f"h3={spec}"], index_root=tmp_path / "ix", k=50)
    res = results["h3"]
    dev = load_beir(folder, "dev")

    def run(text, queries):
        return Run.from_rankings(ws.retriever(text).retrieve(queries, 50))

    def best(first, second):
        scores = {a / 20: evaluate(interpolate(first, second, alpha=a / 20), dev.qrels, ["nDCG@10"]).aggregate[
            "nDCG@10"] for a in range(21)}
        top = max(scores.values())
        return min(a for a, v in scores.items() if v >= top - 1e-12)

    dq, tq = list(dev.queries.values()), list(ds.queries.values())
    a1 = best(run("dense:model=hash:32", dq), run("bm25", dq))
    a2 = best(interpolate(run("dense:model=hash:32", dq), run("bm25", dq), alpha=a1), run("dense:model=hash:16", dq))
    assert res.stats["alphas"] == [(a1, a2)] and res.stats["tuned_on"] == "dev"
    want = interpolate(interpolate(run("dense:model=hash:32", tq), run("bm25", tq), alpha=a1),
                       run("dense:model=hash:16", tq), alpha=a2)
    assert {q: res.run.ranked(q) for q in res.run.qids} == {q: want.ranked(q)[:50] for q in want.qids}
    # cross-validation handles nesting too: one pair of alphas per fold
    (folder / "qrels" / "dev.tsv").unlink()
    _, results, _ = run_pipelines(folder, [spec], index_root=tmp_path / "ix2", k=50)
    assert results[spec].stats["tuned_on"] == "2-fold CV"
    assert [len(a) for a in results[spec].stats["alphas"]] == [2, 2]
