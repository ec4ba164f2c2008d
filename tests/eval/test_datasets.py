from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankstack.errors import DatasetError
from rankstack.eval.datasets import download_beir, load_beir, load_candidates_json, load_trec_dl


def test_load_local_folder(tiny_beir):
    ds = load_beir(tiny_beir)
    assert ds.name == "tiny" and len(ds.corpus) == 5 and set(ds.queries) == {"q1", "q2", "q3"}
    assert ds.corpus["d1"].title == "Cats" and ds.qrels.judgments["q2"]["d4"] == 2


def test_unknown_split_lists_the_available_ones(tiny_beir):
    with pytest.raises(DatasetError, match=r"unknown split 'dev'; available: \['test'\]"):
        load_beir(tiny_beir, "dev")


def test_malformed_corpus_line_is_reported_with_its_number(tiny_beir):
    lines = (tiny_beir / "corpus.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]  # truncate the JSON object on line 3
    (tiny_beir / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"corpus.jsonl:3: invalid JSON"):
        load_beir(tiny_beir)


def test_missing_field_and_missing_file(tiny_beir):
    (tiny_beir / "queries.jsonl").write_text(json.dumps({"_id": "q1"}) + "\n")
    with pytest.raises(DatasetError, match=r"queries.jsonl:1: missing field 'text'"):
        load_beir(tiny_beir)
    (tiny_beir / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"queries.jsonl: file not found"):
        load_beir(tiny_beir)


def test_unknown_source(tmp_path):
    with pytest.raises(DatasetError, match="neither a folder nor a BEIR dataset name"):
        load_beir(tmp_path / "nope")


def test_download_failure_is_a_clear_offline_error(tmp_path):
    with pytest.raises(DatasetError, match="could not download .* offline"):
        download_beir("scifact", tmp_path, url="http://127.0.0.1:9/scifact.zip")
    assert not any(tmp_path.rglob("*.part"))


def test_real_beir_counts(scifact_dir, nfcorpus_dir):
    sf = load_beir(scifact_dir)
    assert (len(sf.corpus), len(sf.queries), sum(len(v) for v in sf.qrels.judgments.values())) == (5183, 300, 339)
    nf = load_beir(nfcorpus_dir)
    assert (len(nf.corpus), len(nf.queries), sum(len(v) for v in nf.qrels.judgments.values())) == (3633, 323, 12334)


def test_dl19_candidates(dl19_dir):
    dl = load_trec_dl(dl19_dir)
    assert len(dl.candidates) == 43 and all(len(r) == 100 for r in dl.candidates)
    assert {r.query.qid for r in dl.candidates} <= set(dl.qrels.qids)
    first = dl.candidates[0]
    assert first.candidates[0].document.text and first.candidates[0].score >= first.candidates[-1].score


def test_trec_dl_year_comes_from_the_files_the_folder_holds(dl19_dir, tmp_path):
    """A DL20-style folder (the DL19 files under dl20 names) loads as dl20 without --year; a folder with two years
    asks for one; one without topics says what it looked for."""
    from rankstack.eval.datasets import trec_dl_year

    src = Path(dl19_dir)
    other = tmp_path / "dl20"
    other.mkdir()
    for name, new in (("topics.dl19-passage.txt", "topics.dl20-passage.txt"),
                      ("qrels.dl19-passage.txt", "qrels.dl20-passage.txt"), ("bm25_top100.json", None)):
        (other / (new or name)).symlink_to(src / name)
    dl = load_trec_dl(other)
    assert dl.year == "dl20" and len(dl.candidates) == 43
    assert trec_dl_year(src) == "dl19" and load_trec_dl(src).year == "dl19"
    (other / "topics.dl19-passage.txt").symlink_to(src / "topics.dl19-passage.txt")
    (other / "qrels.dl19-passage.txt").symlink_to(src / "qrels.dl19-passage.txt")
    with pytest.raises(DatasetError, match="several years \\(dl19, dl20\\); choose one with --year"):
        load_trec_dl(other)
    assert load_trec_dl(other, "dl19").year == "dl19"
    with pytest.raises(DatasetError, match="no topics.YEAR-passage.txt"):
        load_trec_dl(tmp_path)


def test_malformed_candidates(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps([{"query": "x", "hits": [{"qid": 1, "docid": "a"}]}]))
    with pytest.raises(DatasetError, match="entry 0 is malformed"):
        load_candidates_json(tmp_path / "c.json")
