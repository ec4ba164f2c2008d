from __future__ import annotations

import pytest

from rankstack.errors import DatasetError
from rankstack.eval.metrics import evaluate
from rankstack.eval.trec import read_qrels, read_run, read_topics, write_qrels, write_run
from rankstack.records import Qrels, Run


def test_run_roundtrip_and_rank_column(tmp_path):
    run = Run(scores={"q1": {"a": 1.0, "b": 3.0, "c": 2.0}, "q2": {"x": 0.5}}, name="my run")
    path = write_run(run, tmp_path / "r.trec")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 b 1 3.0 my_run"
    assert [l.split()[2] for l in lines[:3]] == ["b", "c", "a"]
    back = read_run(path)
    assert back.to_dict() == run.to_dict() and back.name == "my_run"
    exact = Run(scores={"q": {"a": 1 / 61 + 1 / 62, "b": 0.1 + 0.2, "c": 1e-300}})
    assert read_run(write_run(exact, tmp_path / "e.trec")).to_dict() == exact.to_dict()  # every bit survives


def test_written_ranks_are_the_ranks_trec_eval_scores(tmp_path):
    """With tied scores, the rank column we write must be the order trec_eval evaluates (it ignores ranks)."""
    docs = ["d01", "d02", "d03", "d04", "d05"]
    run = Run(scores={"q": {d: 1.0 for d in docs}})
    lines = write_run(run, tmp_path / "tie.trec").read_text().splitlines()
    written = {l.split()[2]: int(l.split()[3]) for l in lines}
    for d in docs:  # make each doc the only relevant one in turn: trec_eval's RR must be 1/written rank
        rr = evaluate(read_run(tmp_path / "tie.trec"), Qrels(judgments={"q": {d: 1}}), ["RR"]).aggregate["RR"]
        assert rr == pytest.approx(1 / written[d]), d


def test_write_run_depth(tmp_path):
    run = Run(scores={"q": {str(i): float(i) for i in range(10)}})
    assert len(write_run(run, tmp_path / "r", k=3).read_text().splitlines()) == 3


def test_malformed_run_names_the_line(tmp_path):
    p = tmp_path / "bad.trec"
    p.write_text("q1 Q0 a 1 1.0 t\nq1 Q0 b 2 t\n")
    with pytest.raises(DatasetError, match=r"bad.trec:2: expected 6 columns"):
        read_run(p)
    p.write_text("q1 Q0 a 1 high t\n")
    with pytest.raises(DatasetError, match=r":1: score 'high' is not a number"):
        read_run(p)


def test_qrels_trec_and_beir_formats(tmp_path):
    q = Qrels(judgments={"q1": {"a": 1, "b": 0}, "q2": {"c": 2}})
    assert read_qrels(write_qrels(q, tmp_path / "q.txt")).to_dict() == q.to_dict()
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tb\t0\nq2\tc\t2\n")
    assert read_qrels(tmp_path / "q.tsv").to_dict() == q.to_dict()
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\n")
    with pytest.raises(DatasetError, match=r"bad.tsv:2"):
        read_qrels(tmp_path / "bad.tsv")


def test_topics(tmp_path):
    (tmp_path / "t.tsv").write_text("1\thello world\n2\tsecond query\n")
    assert read_topics(tmp_path / "t.tsv")["2"].text == "second query"
    (tmp_path / "bad.tsv").write_text("1\thello\n2\n")
    with pytest.raises(DatasetError, match=r"bad.tsv:2"):
        read_topics(tmp_path / "bad.tsv")
