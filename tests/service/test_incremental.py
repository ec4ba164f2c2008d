"""A collection's BM25 index takes writes in place (bm25_updates: incremental), against the rebuild it replaced."""

from __future__ import annotations

import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")

from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.index.lucene import LuceneIndex  # noqa: E402
from rankstack.records import Document  # noqa: E402
from rankstack.retrieval.bm25 import BM25Retriever  # noqa: E402
from rankstack.service.collection import Collection  # noqa: E402
from rankstack.service.config import CollectionConfig  # noqa: E402


@pytest.fixture(scope="module")
def scifact(scifact_dir):
    ds = load_beir(scifact_dir)
    return list(ds.corpus.values())[:600], list(ds.queries.values())[:30]


def segment_files(root):
    return {p.name: p.stat().st_mtime_ns for p in (root / "bm25" / "lucene").iterdir() if p.name.startswith("_")}


def search(col, queries):
    return [[(c.docid, c.score) for c in r.candidates] for r in col.search(queries, 50)[0]]


def test_upserts_and_deletes_write_in_place_and_match_a_rebuild(tmp_path, scifact):
    docs, queries = scifact
    cfg = CollectionConfig(name="c", indexes=["bm25"], pipeline={"retrievers": ["bm25"]})
    rebuild_cfg = cfg.model_copy(update={"bm25_updates": "rebuild"})
    col, ref = Collection(tmp_path / "inc", cfg), Collection(tmp_path / "reb", rebuild_cfg)
    for c in (col, ref):
        for i in range(0, 600, 200):
            c.upsert(docs[i:i + 200])
    assert search(col, queries) == search(ref, queries)

    before = segment_files(tmp_path / "inc")
    new = Document(docid=docs[5].docid, title=docs[5].title, text=docs[5].text + " zebrafish")
    for c in (col, ref):
        c.upsert([new])
        c.delete(docs[7].docid)
    after = segment_files(tmp_path / "inc")
    assert all(after.get(name) == t for name, t in before.items() if not name.endswith(".liv"))  # not rewritten
    assert len(after) > len(before)  # a new segment (and live-docs files for the tombstones)
    got = search(col, queries)
    assert all(docs[7].docid not in {d for d, _ in r} for r in got) and len(col) == len(ref) == 599
    # the two tombstones count in BM25's statistics until a merge; merged away, the runs are the rebuild's
    bm25 = col.indexes.of_kind("bm25")[0]
    bm25.live.expunge_deletes()
    bm25.refresh(col.indexes.lock)
    assert search(col, queries) == search(ref, queries)

    # reopened (a restart), it is taken as it is, not rebuilt
    files = segment_files(tmp_path / "inc")
    col.close()
    col = Collection(tmp_path / "inc", cfg)
    assert segment_files(tmp_path / "inc") == files and search(col, queries) == search(ref, queries)
    col.close()


def test_a_crash_between_the_log_and_lucene_commits_is_replayed(tmp_path, scifact):
    """The log commits first; a process killed before Lucene's commit leaves the index one write behind, and the
    next open rewrites it from the log (the log is the source of truth)."""
    docs, queries = scifact
    cfg = CollectionConfig(name="c", indexes=["bm25"], pipeline={"retrievers": ["bm25"]})
    col = Collection(tmp_path / "c", cfg)
    col.upsert(docs[:100])
    col.log.write(puts=docs[100:150])  # durable in the log; the process "dies" before the index write
    col.close()
    col = Collection(tmp_path / "c", cfg)
    assert col.indexes.of_kind("bm25")[0].live.applied_seq == col.seq == 2
    assert len(col.indexes.of_kind("bm25")[0].live) == 150
    fresh = LuceneIndex.build(docs[:150], tmp_path / "fresh", store_documents=False, show_progress=False)
    want = [[(c.docid, c.score) for c in r.candidates] for r in BM25Retriever(fresh).retrieve(queries, 50)]
    assert search(col, queries) == want
    col.close()
