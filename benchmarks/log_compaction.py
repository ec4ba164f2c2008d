"""How long a collection's document log takes to compact at size, and what the write that triggers it waits.

    python benchmarks/log_compaction.py [--docs 50000 200000] [--batch 100] [--text-bytes 1500] [--out DIR]

For each size: ``docs`` documents (SciFact-sized texts of about ``--text-bytes`` bytes, random words) are written in
requests of ``--batch`` documents, then every document is written again, twice, in the same requests; the threshold
(``log_compact_bytes``) is the size of one version, so the compaction runs once replaced versions outweigh live ones
(early in the third pass, the log then about twice one version). Two modes in the same run: ``inline`` (the write
that crosses the threshold rewrites the log before it returns, as RankStack did up to 0.5) and ``background`` (the
default now: a thread rewrites a snapshot; writes wait only for the tail copy and the switch). Printed: the log size before and after, the
compaction's time, the write that triggered it, and the median, p99 and maximum of the writes. Afterwards every document is read back and checked against the last version written.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, save_results  # noqa: E402

logger = logging.getLogger("benchmarks.log_compaction")


def texts(rng, n: int, size: int, words: list[str]) -> list[str]:
    per = max(1, size // 7)
    picks = rng.integers(0, len(words), (n, per))
    return [" ".join(words[i] for i in row) for row in picks]


def run(n: int, batch: int, size: int, root: Path, background: bool) -> dict:
    from rankstack.records import Document
    from rankstack.service.log import DocumentLog

    rng = np.random.default_rng(n)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(3, 10))) for _ in range(5000)]
    path = root / f"log-{n}" / "log.jsonl"
    log = DocumentLog(path, compact_bytes=None, background=background)
    for s in range(0, n, batch):
        log.write([Document(docid=f"d{i}", text=t) for i, t in zip(range(s, s + batch), texts(rng, batch, size, words))])
    one_version = path.stat().st_size
    log.compact_bytes = one_version  # compacts once the second pass has replaced over half the first
    lat, sizes, last, spikes_at = [], [], {}, []
    for v, s in ((v, s) for v in (2, 3) for s in range(0, n, batch)):
        docs = [Document(docid=f"d{i}", text=t, title=f"v{v} {i}")
                for i, t in zip(range(s, min(n, s + batch)), texts(rng, min(batch, n - s), size, words))]
        before, pre = log.compactions, log.size_bytes
        t0 = time.perf_counter()
        log.write(docs)
        started = log.compacting and not spikes_at
        lat.append((time.perf_counter() - t0) * 1000)
        last.update({d.docid: d for d in docs})
        if log.compactions > before or started:  # inline: ran in this write; background: started by it
            spikes_at.append((len(lat) - 1, pre, time.perf_counter()))
        if spikes_at and len(sizes) == 0 and log.compactions:
            sizes.append((spikes_at[0][1], log.size_bytes, time.perf_counter() - spikes_at[0][2]))
    log.wait_compaction()
    if spikes_at and not sizes:
        sizes.append((spikes_at[0][1], log.size_bytes, time.perf_counter() - spikes_at[0][2]))
    lat = np.array(lat)
    trigger = spikes_at[0][0] if spikes_at else None
    plain = np.delete(lat, [trigger]) if trigger is not None else lat
    for d, doc in last.items():
        got = log[d]
        assert got.text == doc.text and got.title == doc.title, f"{d} read back wrong after compaction"
    row = {"mode": "background" if background else "inline", "docs": n, "batch": batch,
           "log_MB_one_version": round(one_version / 1e6, 1),
           "log_MB_before": round(sizes[0][0] / 1e6, 1) if sizes else None,
           "compacted_MB": round(sizes[0][1] / 1e6, 1) if sizes else None,
           "write_ms_p50": round(float(np.median(plain)), 2), "write_ms_p99": round(float(np.percentile(plain, 99)), 2),
           "write_ms_max": round(float(lat.max()), 1),
           "triggering_write_ms": round(float(lat[trigger]), 1) if trigger is not None else None,
           # inline: the triggering write minus a plain one; background: from its start to the switch (the
           # switch is seen at the first write after it, so this is an upper bound)
           "compaction_s": (round((float(lat[trigger]) - float(np.median(plain))) / 1000, 3) if not background
                            else round(sizes[0][2], 3)) if sizes else None}
    log.close()
    shutil.rmtree(path.parent)
    logger.info("%s", row)
    return row


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[50000, 200000])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--text-bytes", type=int, default=1500)
    p.add_argument("--modes", nargs="+", default=["inline", "background"], choices=["inline", "background"])
    p.add_argument("--dir", type=Path, default=None, help="where the logs are written (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        rows = [run(n, args.batch, args.text_bytes, root, mode == "background") for n in args.docs
                for mode in args.modes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = markdown(rows, list(rows[0]))
    print(table)
    save_results(args.out, {"machine": platform.machine(), "args": {k: str(v) for k, v in vars(args).items()},
                            "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
