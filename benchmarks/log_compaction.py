"""How long a collection's document log takes to compact at size, and what the write that triggers it waits.

    python benchmarks/log_compaction.py [--docs 50000 200000] [--batch 100] [--text-bytes 1500] [--out DIR]

For each size: ``docs`` documents (SciFact-sized texts of about ``--text-bytes`` bytes, random words) are written in
requests of ``--batch`` documents, then every document is written again, twice, in the same requests; the threshold
(``log_compact_bytes``) is the size of one version, so the compaction runs once replaced versions outweigh live ones
(early in the third pass, the log then about twice one version). Printed: the log size before and after, the
compaction's own time (the write that ran it, minus that write's median), and the median and p99 of the other
writes. Afterwards every document is read back and checked against the last version written.
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


def run(n: int, batch: int, size: int, root: Path) -> dict:
    from rankstack.records import Document
    from rankstack.service.log import DocumentLog

    rng = np.random.default_rng(n)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(3, 10))) for _ in range(5000)]
    path = root / f"log-{n}" / "log.jsonl"
    log = DocumentLog(path, compact_bytes=None)
    for s in range(0, n, batch):
        log.write([Document(docid=f"d{i}", text=t) for i, t in zip(range(s, s + batch), texts(rng, batch, size, words))])
    one_version = path.stat().st_size
    log.compact_bytes = one_version  # compacts once the second pass has replaced over half the first
    lat, sizes, last = [], [], {}
    for v, s in ((v, s) for v in (2, 3) for s in range(0, n, batch)):
        docs = [Document(docid=f"d{i}", text=t, title=f"v{v} {i}")
                for i, t in zip(range(s, min(n, s + batch)), texts(rng, min(batch, n - s), size, words))]
        before, pre = log.compactions, log._size
        t0 = time.perf_counter()
        log.write(docs)
        lat.append(((time.perf_counter() - t0) * 1000, log.compactions > before))
        last.update({d.docid: d for d in docs})
        if log.compactions > before:
            sizes.append((pre, log._size))
    plain = np.array([ms for ms, c in lat if not c])
    spikes = [ms for ms, c in lat if c]
    for d, doc in last.items():
        got = log[d]
        assert got.text == doc.text and got.title == doc.title, f"{d} read back wrong after compaction"
    row = {"docs": n, "batch": batch, "log_MB_one_version": round(one_version / 1e6, 1),
           "log_MB_before": round(sizes[0][0] / 1e6, 1) if sizes else None, "compactions": len(spikes),
           "compaction_s": round((spikes[0] - float(np.median(plain))) / 1000, 3) if spikes else None,
           "compacted_MB": round(sizes[0][1] / 1e6, 1) if sizes else None,
           "write_ms_p50": round(float(np.median(plain)), 2), "write_ms_p99": round(float(np.percentile(plain, 99)), 2),
           "write_with_compaction_ms": round(spikes[0], 1) if spikes else None}
    row["compaction_MB_per_s"] = round(row["log_MB_before"] / row["compaction_s"], 1) if spikes else None
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
    p.add_argument("--dir", type=Path, default=None, help="where the logs are written (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        rows = [run(n, args.batch, args.text_bytes, root) for n in args.docs]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = markdown(rows, list(rows[0]))
    print(table)
    save_results(args.out, {"machine": platform.machine(), "args": {k: str(v) for k, v in vars(args).items()},
                            "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
