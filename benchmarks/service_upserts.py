"""Writes while users search: a BM25 collection ingested over HTTP, then single-document upserts arriving one after
the other while a client searches without pause, with `bm25_updates = "rebuild"` (every write rebuilds the Lucene
index, RankStack <= 0.2) and `"incremental"` (a write adds a Lucene segment; replaced versions are tombstones until
Lucene merges them), at two collection sizes, in one run.

    python benchmarks/service_upserts.py [--sizes 5000 50000] [--upserts 1000] [--rebuild-upserts 100 20]
    python benchmarks/service_upserts.py --modes every-write checkpoint

`every-write`, `checkpoint` and `checkpoint-50` run a flat dense collection instead (encoder `hash:384`, so the rows
time the index's work, not MiniLM's: 384-d vectors like MiniLM's); `every-write` checkpoints on each write
(`index_checkpoint_docs = 1`), `checkpoint` takes writes in memory and checkpoints every 1,000 changed documents (the
default; the log is the durable copy), `checkpoint-50` every 50, so that 2% of the upserts are the ones that write
a checkpoint (`quiet_upsert_ms_p99` and `quiet_upsert_ms_max` show what they cost). To time an older version, run
this script from that checkout's folder with `PYTHONPATH` set to it (the server starts as `python -m rankstack`,
which imports from the working directory first): before 2026-12-06 a checkpoint saved the whole index in the
write that crossed it; now it writes a segment of the documents changed (`rankstack/service/segments.py`).

Documents: SciFact + NFCorpus (8,816 texts), repeated with new docids to reach the larger size (the repeats make
the texts' statistics unrealistic, not the index's work). Each upsert replaces an existing document with new text
(its text with a few words appended), one request at a time; `upsert_ms` is the client's latency of each
(acknowledged: durable and searchable), timed while a client searches; `quiet_upsert_ms` times up to 200 upserts
before any search runs (the write's own cost, without waiting for a search in flight). `search_ms` are the latencies of searches of the collection's one index (k=10,
SciFact queries) sent back to back by a second client during the upserts; `idle_search_ms` the same with no writes.
Rebuild and every-write modes run fewer upserts (`--rebuild-upserts`, per size): each rewrites the whole index.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, save_results  # noqa: E402

from rankstack.service.process import free_port, start_server  # noqa: E402

logger = logging.getLogger("benchmarks.service_upserts")
DATA = Path(__file__).resolve().parents[1].parent / "shared/data/beir"


def corpus(n: int) -> list[dict]:
    from rankstack.eval.datasets import load_beir

    base = [d for name in ("scifact", "nfcorpus") for d in load_beir(DATA / name).corpus.values()]
    out = []
    for i in range(n):
        d = base[i % len(base)]
        rep = i // len(base)
        out.append({"docid": d.docid if rep == 0 else f"{d.docid}#r{rep}", "title": d.title, "text": d.text})
    return out


def searcher(base: str, name: str, queries: list[str], stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=600) as c:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            r = c.post(f"{base}/v1/collections/{name}/search", json={"query": queries[i % len(queries)], "k": 10,
                                                                     "return_documents": False})
            r.raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
            i += 1


MODES = {  # mode -> (index kind, collection settings)
    "rebuild": ("bm25", 'bm25_updates = "rebuild"'),
    "incremental": ("bm25", 'bm25_updates = "incremental"'),
    "every-write": ("dense", 'encoder = "hash:384"\nindex_checkpoint_docs = 1'),
    "checkpoint": ("dense", 'encoder = "hash:384"\nindex_checkpoint_docs = 1000'),
    "checkpoint-50": ("dense", 'encoder = "hash:384"\nindex_checkpoint_docs = 50'),
}


def run(mode: str, n: int, upserts: int, queries: list[str], work: Path) -> dict:
    data, cfg = work / f"{mode}-{n}", work / f"{mode}-{n}.toml"
    kind, settings = MODES[mode]
    cfg.write_text(f'[limits]\nmax_inflight = 4\nmax_queue = 64\n\n[collections.c]\nindexes = ["{kind}"]\n'
                   f'{settings}\n[collections.c.pipeline]\nretrievers = ["{kind}"]\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(data, cfg, port)
    docs = corpus(n)
    try:
        with httpx.Client(timeout=3600) as c:
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                c.post(f"{base}/v1/collections/c/documents", json={"documents": docs[i:i + 1000]}).raise_for_status()
            ingest_s = time.perf_counter() - t0
            logger.info("%s %d: ingested in %.1f s", mode, n, ingest_s)
            rng = np.random.default_rng(n)

            def upsert_all(count: int, tag: str) -> list[float]:
                lat = []
                for j, k in enumerate(rng.choice(n, count, replace=False)):
                    d = dict(docs[k], text=docs[k]["text"] + f" revised {tag}{j} statin zebrafish")
                    u0 = time.perf_counter()
                    c.post(f"{base}/v1/collections/c/documents", json={"documents": [d]}).raise_for_status()
                    lat.append((time.perf_counter() - u0) * 1000)
                return lat

            quiet = upsert_all(min(200, upserts), "q")  # no search running: the write's own cost
            idle: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=searcher, args=(base, "c", queries, stop, idle))
            t.start()
            time.sleep(10)
            stop.set()
            t.join()
            busy: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=searcher, args=(base, "c", queries, stop, busy))
            t.start()
            t0 = time.perf_counter()
            lat = upsert_all(upserts, "")
            wall = time.perf_counter() - t0
            stop.set()
            t.join()
            n_live = {x["name"]: x["documents"] for x in c.get(f"{base}/v1/collections").json()["collections"]}["c"]
            assert n_live == n, (n_live, n)
    finally:
        proc.terminate()
        proc.wait(120)
    row = {"mode": mode, "docs": n, "ingest_docs_per_s": n / ingest_s, "upserts": upserts,
           "upserts_per_s": upserts / wall, "upsert_ms_p50": float(np.percentile(lat, 50)),
           "upsert_ms_p95": float(np.percentile(lat, 95)),
           "upsert_ms_p99": float(np.percentile(lat, 99)), "upsert_ms_max": float(np.max(lat)), "quiet_upsert_ms_p50": float(np.percentile(quiet, 50)),
           "quiet_upsert_ms_p95": float(np.percentile(quiet, 95)),
           "quiet_upsert_ms_p99": float(np.percentile(quiet, 99)), "quiet_upsert_ms_max": float(np.max(quiet)),
           "idle_search_ms_p95": float(np.percentile(idle, 95)),
           "search_ms_p50": float(np.percentile(busy, 50)), "search_ms_p95": float(np.percentile(busy, 95)),
           "searches": len(busy)}
    logger.info("%s", row)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    p.add_argument("--upserts", type=int, default=1000)
    p.add_argument("--rebuild-upserts", type=int, nargs="+", default=[100, 20],
                   help="upserts in rebuild mode, one per size")
    p.add_argument("--modes", nargs="+", default=["rebuild", "incremental"], choices=list(MODES),
                   help="rebuild / incremental: BM25; every-write / checkpoint: a flat dense index")
    p.add_argument("--out", type=Path, default=Path("runs/service_upserts"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from rankstack.eval.datasets import load_beir

    queries = [q.text for q in load_beir(DATA / "scifact").queries.values()]
    work = Path(tempfile.mkdtemp(prefix="rankstack-upserts-"))
    rows = []
    try:
        for si, n in enumerate(args.sizes):
            for mode in args.modes:
                slow = mode in ("rebuild", "every-write")
                u = args.rebuild_upserts[min(si, len(args.rebuild_upserts) - 1)] if slow else args.upserts
                rows.append(run(mode, n, u, queries, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        ref = next((x for x in rows if x["docs"] == r["docs"] and x["mode"] in ("rebuild", "every-write")
                    and MODES[x["mode"]][0] == MODES[r["mode"]][0]), None)
        r["upsert_speedup_vs_old"] = (ref["upsert_ms_p50"] / r["upsert_ms_p50"]) if ref else None
    cols = ["mode", "docs", "ingest_docs_per_s", "upserts", "upserts_per_s", "upsert_ms_p50", "upsert_ms_p95",
            "upsert_ms_p99", "upsert_ms_max", "quiet_upsert_ms_p50", "quiet_upsert_ms_p95", "quiet_upsert_ms_p99",
            "quiet_upsert_ms_max", "idle_search_ms_p95", "search_ms_p50", "search_ms_p95",
            "searches", "upsert_speedup_vs_old"]
    table = markdown(rows, cols)
    print(table)
    save_results(args.out, {"machine": platform.machine(), "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
