"""What a service collection's background segment merge costs, per dense index kind, at a size where it matters.

    python benchmarks/segment_merge.py [--n 200000] [--kinds flat hnsw ivf-flat] [--batch 1000]

A collection checkpoints by writing segments (the documents changed since the last checkpoint, see
`rankstack/service/segments.py`) and, once they hold a quarter of the index, rewrites the saved base in a thread:
load it as a second object, apply the segments, save it atomically, delete them. This times that merge for
`--n` synthetic 384-d vectors (as `compressed_indexes.py`) after `n/4 + 1` upserts of existing documents arrive in
checkpoints of `--batch` (the service's default `index_checkpoint_docs` is 1,000), through the collection's own slot
code (`Slot.pack / replay / load_base` of the dense kind): the merge's wall time and CPU seconds (the process's CPU time during the
merge less the searching thread's own), the memory it adds (the largest RSS sampled during the merge less the RSS
before: the second copy), and single-query search latency on the live index while it runs against idle. The merged
base, loaded again, is checked against the live index: same documents, and the same top-10 (flat: identical;
approximate kinds: the overlap is printed).
"""

from __future__ import annotations

import argparse
import logging
import platform
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, save_results  # noqa: E402
from compressed_indexes import synthetic  # noqa: E402
from service_load import rss_mb  # noqa: E402

from rankstack.index.base import IndexSpec  # noqa: E402
from rankstack.index.registry import build_vector_index  # noqa: E402
from rankstack.retrieval import kinds  # noqa: E402
from rankstack.service.slots import Slot  # noqa: E402
from rankstack.service.segments import Journal  # noqa: E402

logger = logging.getLogger("benchmarks.segment_merge")


class _Encoder:
    dim = 384


def latencies(index, q: np.ndarray, stop=None, limit: int = 2000, rss: list | None = None) -> list[float]:
    out = []
    for i in range(limit):
        if stop is not None and not stop():
            break
        t0 = time.perf_counter()
        index.search(q[i % len(q):i % len(q) + 1], 10)
        out.append((time.perf_counter() - t0) * 1000)
        if rss is not None:
            rss.append(rss_mb(os.getpid()))
    return out


def run_kind(kind: str, x: np.ndarray, q: np.ndarray, batch: int, root: Path) -> dict:
    n = len(x)
    docids = [f"d{i}" for i in range(n)]
    slot = Slot(kind=kinds.get("dense"), settings=kinds.settings_of(f"dense:index=({kind})"), spec=kind,
                path=root / kind, encoder=_Encoder())
    t0 = time.perf_counter()
    live = build_vector_index(IndexSpec.parse(kind), docids, x)
    build_s = time.perf_counter() - t0
    live.meta["applied_seq"] = 0
    live.save(slot.path)
    rng = np.random.default_rng(1)
    changed = rng.choice(n, n // 4 + 1, replace=False)
    seq = 0
    t0 = time.perf_counter()
    for lo in range(0, len(changed), batch):  # checkpoints of `batch` upserts: the live index and one segment each
        rows = changed[lo:lo + batch]
        ids = [docids[i] for i in rows]
        vecs = x[rows] + 0.05 * rng.standard_normal((len(rows), x.shape[1])).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        live.add(ids, vecs, upsert=True)
        journal = Journal()
        journal.remove(ids)
        for d, v in zip(ids, vecs):
            journal.put(d, v)
        slot.segments.write(seq, seq + 1, journal, slot.pack)
        seq += 1
    write_s = time.perf_counter() - t0
    assert slot.segments.due(len(live)), "the segments should be due for a merge"
    idle = latencies(live, q, limit=300)
    rss0, rss = rss_mb(os.getpid()), []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    thread0 = time.thread_time()
    slot.segments.merge_in_background(slot.load_base, slot.replay)
    during = latencies(live, q, stop=slot.segments.merging, limit=10**9, rss=rss)
    slot.segments.wait()
    wall = time.perf_counter() - wall0
    merge_cpu = (time.process_time() - cpu0) - (time.thread_time() - thread0)
    if slot.segments.merge_error is not None:
        raise slot.segments.merge_error
    merged = slot.load_base(slot.path)
    assert merged.meta["applied_seq"] == seq and not slot.segments.list()
    assert len(merged) == len(live) and all(docids[i] in merged for i in changed), "the merge lost documents"
    a = [{d for d, _ in r} for r in merged.docid_pairs(merged.search(q, 10))]
    b = [{d for d, _ in r} for r in live.docid_pairs(live.search(q, 10))]
    overlap = float(np.mean([len(x_ & y_) / 10 for x_, y_ in zip(a, b)]))
    if kind == "flat":
        assert overlap == 1.0, "a merged flat index must search like the live one"
    return {"kind": kind, "docs": n, "segments": seq, "segment_docs": len(changed), "build_s": build_s,
            "live_writes_s": write_s, "merge_wall_s": wall, "merge_cpu_s": merge_cpu,
            "rss_growth_mb": max(rss, default=rss0) - rss0,
            "search_ms_p50_idle": float(np.percentile(idle, 50)), "search_ms_p99_idle": float(np.percentile(idle, 99)),
            "search_ms_p50_merging": float(np.percentile(during, 50)) if during else float("nan"),
            "search_ms_p99_merging": float(np.percentile(during, 99)) if during else float("nan"),
            "top10_overlap_with_live": overlap}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf-flat"])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("runs/segment_merge"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    x, q = synthetic(args.n)
    rows = []
    root = Path(tempfile.mkdtemp(prefix="segment-merge-"))
    try:
        for kind in args.kinds:
            rows.append(run_kind(kind, x, q, args.batch, root))
            logger.info("%s", rows[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = ["kind", "docs", "segments", "segment_docs", "build_s", "merge_wall_s", "merge_cpu_s", "rss_growth_mb",
            "search_ms_p50_idle", "search_ms_p99_idle", "search_ms_p50_merging", "search_ms_p99_merging",
            "top10_overlap_with_live"]
    table = markdown(rows, cols)
    print(table)
    save_results(args.out, {"n": args.n, "machine": platform.machine(), "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
