from __future__ import annotations

import json

import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")

from rankstack.cli import main
from rankstack.eval.trec import read_run


def test_eval_bm25_writes_run_and_report(tiny_beir, tmp_path, capsys):
    rc = main(["-q", "eval", "--dataset", str(tiny_beir), "--pipeline", "bm25", "-k", "3",
               "--index-root", str(tmp_path / "ix"), "--output-dir", str(tmp_path / "runs")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| bm25 |" in out
    run = read_run(tmp_path / "runs" / "tiny" / "bm25.test.trec")
    assert run.ranked("q1")[0][0] == "d1" and run.ranked("q2")[0][0] == "d4"
    report = json.loads((tmp_path / "runs" / "tiny" / "report.test.json").read_text())
    assert report["rows"]["bm25"]["nDCG@10"] > 0.9


def test_index_and_search(tiny_beir, tmp_path, capsys):
    assert main(["-q", "index", "--dataset", str(tiny_beir), "--kind", "bm25", "--output", str(tmp_path / "i")]) == 0
    assert main(["-q", "search", "--index", str(tmp_path / "i"), "--query", "tea leaves", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines[lines.index("# tea leaves") + 1].split()
    assert first[0] == "1" and first[2] == "d5"


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["-q", "eval", "--dataset", str(tmp_path / "missing"), "--pipeline", "bm25"]) == 2
    assert "neither a folder nor a BEIR dataset name" in capsys.readouterr().err
    assert main(["-q", "search", "--index", str(tmp_path), "--query", "x"]) == 2
    assert "not a RankStack index" in capsys.readouterr().err
    # a bad spec names the bad part and what is allowed, and fails before any data loads
    assert main(["-q", "eval", "--dataset", str(tmp_path / "missing"), "--pipeline", "bm25 >> frist"]) == 2
    err = capsys.readouterr().err
    assert "unknown component 'frist'" in err and "rerankers: embedding, cross-encoder, icr, first" in err
    assert main(["-q", "eval", "--dataset", str(tmp_path / "missing"), "--pipeline", "dense:index=(pq:q=3)"]) == 2
    assert "index spec 'pq:q=3' has no option 'q'; its options are nlist, nprobe" in capsys.readouterr().err
