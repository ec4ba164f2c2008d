"""Load test of the search service on 127.0.0.1: throughput and latency percentiles per pipeline, then overload.

Starts `rankstack serve` as a subprocess on a free local port, ingests a BEIR corpus into a collection (BM25 +
dense), drives it with concurrent clients for a bounded number of requests per pipeline, and prints requests/s
and p50/p95/p99 latency. The overload phase restarts the server with a small admission queue and fires far more
concurrent requests than it admits: it reports how many got 429, that none got 5xx, that the server survived,
and its peak resident memory. Every loop is bounded in count and time; only 127.0.0.1 is contacted.

    python benchmarks/service_load.py --dataset ../shared/data/beir/scifact [--requests 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from rankstack.service.process import free_port, start_server


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def drive(url: str, bodies: list[dict], concurrency: int, timeout: float = 60) -> tuple[list[float], list[int], float]:
    lat: list[float] = []
    codes: list[int] = []
    queue = list(reversed(bodies))

    async def worker(client: httpx.AsyncClient):
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                codes.append(r.status_code)
            except httpx.HTTPError:
                codes.append(-1)
            lat.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, codes, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/beir/scifact")
    p.add_argument("--requests", type=int, default=300, help="requests per pipeline (bounded)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--keep", type=Path, default=None, help="keep the ingested collection here (reused next time)")
    args = p.parse_args()

    from rankstack.eval.datasets import load_beir

    ds = load_beir(args.dataset)
    work = args.keep or Path(tempfile.mkdtemp(prefix="rankstack-load-"))
    data = work / "data"
    cfg = work / "svc.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'[limits]\nmax_inflight = 4\nmax_queue = 256\n\n[collections.{ds.name}]\nindexes = ["bm25", "dense"]\n'
                   f'encoder = "{args.encoder}"\n[collections.{ds.name}.pipeline]\nretrievers = ["bm25", "dense"]\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(data, cfg, port)
    rows = []
    try:
        with httpx.Client(timeout=900) as c:
            n = {x["name"]: x["documents"] for x in c.get(f"{base}/v1/collections").json()["collections"]}[ds.name]
            if n != len(ds.corpus):
                docs = [{"docid": d.docid, "title": d.title, "text": d.text} for d in ds.corpus.values()]
                t0 = time.perf_counter()
                for i in range(0, len(docs), 500):
                    c.post(f"{base}/v1/collections/{ds.name}/documents", json={"documents": docs[i:i + 500]}).raise_for_status()
                print(f"ingested {len(docs)} documents in {time.perf_counter() - t0:.1f} s")
        texts = [q.text for q in ds.queries.values()]
        pipelines = {"bm25": ["bm25"], "dense": ["dense"], "hybrid-rrf": ["bm25", "dense"]}
        url = f"{base}/v1/collections/{ds.name}/search"
        for name, retr in pipelines.items():
            bodies = [{"query": texts[i % len(texts)], "k": args.k, "return_documents": False,
                       "pipeline": {"retrievers": retr}} for i in range(args.requests)]
            asyncio.run(drive(url, bodies[:20], args.concurrency))  # warm-up
            lat, codes, wall = asyncio.run(drive(url, bodies, args.concurrency))
            ms = np.array(lat) * 1000
            rows.append((name, len(bodies), args.concurrency, len(bodies) / wall, *np.percentile(ms, [50, 95, 99]),
                         sum(c != 200 for c in codes)))
        rss_normal = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)

    # overload: admit 2 at once, queue 4, and fire 64 concurrent clients
    cfg.write_text(cfg.read_text().replace("max_inflight = 4\nmax_queue = 256", "max_inflight = 2\nmax_queue = 4"))
    proc = start_server(data, cfg, port)
    try:
        bodies = [{"query": texts[i % len(texts)], "k": 100, "return_documents": True,
                   "pipeline": {"retrievers": ["bm25", "dense"]}} for i in range(640)]
        import threading

        samples = [rss_mb(proc.pid)]
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                samples.append(rss_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        lat, codes, wall = asyncio.run(drive(f"{base}/v1/collections/{ds.name}/search", bodies, 64))
        done.set()
        sampler.join()
        peak = max(samples)
        alive = httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; dataset {ds.name} ({len(ds.corpus)} docs); "
          f"encoder {args.encoder}; k={args.k}")
    print("| pipeline | requests | clients | req/s | p50 ms | p95 ms | p99 ms | non-200 |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]} |")
    counts = {str(c): codes.count(c) for c in sorted(set(codes))}
    print(f"\noverload (max_inflight=2, max_queue=4, 64 clients, 640 hybrid requests, k=100 with documents): "
          f"{json.dumps(counts)} in {wall:.1f} s; 5xx: {sum(1 for c in codes if c >= 500)}; server alive after: "
          f"{alive}; RSS {rss_normal:.0f} MB after the normal phase, {peak:.0f} MB peak under overload (sampled every 0.2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
