"""``rankstack rerank``: a BEIR run file reranked by a named reranker equals that reranker run in Python."""

from __future__ import annotations

from rankstack.cli import main
from rankstack.eval.datasets import load_beir
from rankstack.eval.trec import read_run, write_run
from rankstack.records import Candidate, Ranking, Run
from rankstack.rerank.embedding import EmbeddingReranker
from rankstack.retrieval.encoders import HashingEncoder

# a deliberately bad input order: the relevant document of each query at the bottom
INPUT = {"q1": ["d5", "d4", "d3", "d2", "d1"], "q2": ["d5", "d1", "d2", "d3", "d4"],
         "q3": ["d4", "d3", "d2", "d1", "d5"]}


def test_rerank_a_beir_run_equals_the_python_reranker(tiny_beir, tmp_path, capsys):
    run_in = tmp_path / "in.trec"
    write_run(Run(scores={q: {d: 10.0 - i for i, d in enumerate(ds)} for q, ds in INPUT.items()}), run_in)
    out = tmp_path / "out.trec"
    rc = main(["-q", "rerank", "--reranker", "embedding:model=hash:256", "--dataset", str(tiny_beir),
               "--run", str(run_in), "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| input |" in printed and "| embedding(hash:256) |" in printed

    ds = load_beir(tiny_beir)
    direct = EmbeddingReranker(HashingEncoder(256))
    got = read_run(out)
    for qid, docids in INPUT.items():
        r = Ranking(query=ds.queries[qid], candidates=tuple(
            Candidate(docid=d, score=10.0 - i, document=ds.corpus[d]) for i, d in enumerate(docids)))
        assert [d for d, _ in got.ranked(qid)] == direct.rerank(r).docids
    assert [d for d, _ in got.ranked("q1")] != INPUT["q1"], "the reranker must have reordered something"


def test_rerank_errors_name_the_problem(tiny_beir, tmp_path, capsys):
    bad = tmp_path / "bad.trec"
    write_run(Run(scores={"q1": {"d1": 2.0, "d99": 1.0}}), bad)
    args = ["-q", "rerank", "--reranker", "embedding:model=hash:64", "--output", str(tmp_path / "o.trec")]
    assert main(args + ["--dataset", str(tiny_beir), "--run", str(bad)]) == 2
    assert "docids ['d99'] are not in the corpus" in capsys.readouterr().err
    assert main(args + ["--dataset", str(tiny_beir)]) == 2
    assert "with --run RUN" in capsys.readouterr().err
    assert main(["-q", "rerank", "--reranker", "monot5", "--dataset", str(tiny_beir), "--run", str(bad),
                 "--output", str(tmp_path / "o.trec")]) == 2
    assert "unknown reranker 'monot5'; choose one of embedding" in capsys.readouterr().err
