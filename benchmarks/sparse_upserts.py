"""What a single-document upsert, and the search right after it, cost the sparse impact index (a service's `splade`
index) at two collection sizes, with engine `scipy`, `lucene` or `seismic`.

    python benchmarks/sparse_upserts.py [--sizes 5000 50000] [--upserts 200] [--engine lucene] [--out DIR]
    PYTHONPATH=<checkout of an older commit> python benchmarks/sparse_upserts.py --label old ...

The index work only, through the calls a service slot's write and a search make (`SparseIndex.add(upsert=True)`,
then a search of one query, k=10: `SparseIndex.search`, or with `--engine lucene` the retriever's Lucene impact
index, which the first search after a write brings up to date, or with `--engine seismic` Seismic with the
documents written since its build scored beside it and merged in the background past a tenth of the collection);
the SPLADE encoder is left out (it costs the same either way). Seismic runs with its default (approximate)
parameters, so its searches are checked by recall@10 against brute force, the others by equality.
Vectors are synthetic, SPLADE-like: 120 terms per document and 20 per query out of BERT's 30,522, Zipf-distributed
term ids, weights quantized at scale 100 as the index does. Run it once per checkout (`--label`) to compare
implementations on the same machine; each run checks its searches against brute force on a sample.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, p50_ms, save_results  # noqa: E402

logger = logging.getLogger("benchmarks.sparse_upserts")
VOCAB = 30522


def vectors(rng, n: int, terms: int):
    import scipy.sparse as sp

    cols = np.minimum(rng.zipf(1.2, (n, terms * 2)) - 1, VOCAB - 1)
    data, indices, indptr = [], [], [0]
    for r in range(n):
        c = np.unique(cols[r])[:terms]
        indices.append(c)
        data.append(rng.gamma(2.0, 0.4, c.size).astype(np.float32) + 0.01)
        indptr.append(indptr[-1] + c.size)
    w = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=(n, VOCAB))
    t = w.copy()
    t.data[:] = 1
    return w, t


class _Vocabulary:
    """Stands for the SPLADE encoder: a retriever over precomputed impacts reads only its name and vocabulary."""

    model_name = fingerprint = "synthetic"


def searcher(index, engine: str, queries, folder: Path):
    """``search(j)``: query ``j``'s top 10 as sorted float32 scores, through ``engine``."""
    if engine == "scipy":
        return lambda j: index.search(queries[j:j + 1], 10).scores[0]
    from rankstack.retrieval.sparse import SparseRetriever

    retriever = SparseRetriever(_Vocabulary(), index, engine=engine, lucene_path=folder)
    if engine == "seismic":
        return lambda j: retriever.search_impacts(queries[j:j + 1], 10)[0]
    return lambda j: np.array([s for _, s in retriever.search_impacts(queries[j:j + 1], 10)[0]], np.float32)


def run(n: int, upserts: int, label: str, engine: str, folder: Path) -> dict:
    from rankstack.index.sparse import SparseIndex

    rng = np.random.default_rng(n)
    index = SparseIndex([f"t{i}" for i in range(VOCAB)], fingerprint="synthetic")
    for s in range(0, n, 5000):
        w, t = vectors(rng, min(5000, n - s), 120)
        index.add([f"d{i}" for i in range(s, min(n, s + 5000))], w, t)
    queries = index.quantize_queries(vectors(rng, 50, 20)[0])
    search = searcher(index, engine, queries, folder / f"lucene-{n}")
    t0 = time.perf_counter()
    search(0)  # the scipy search matrix, or the Lucene index built
    first = time.perf_counter() - t0
    up, se = [], []
    for j in range(upserts):
        w, t = vectors(rng, 1, 120)
        t0 = time.perf_counter()
        index.add([f"d{int(rng.integers(0, n))}"], w, t, upsert=True)
        t1 = time.perf_counter()
        search(j % 50)
        t2 = time.perf_counter()
        up.append((t1 - t0) * 1000)
        se.append((t2 - t1) * 1000)
    # brute force on the live rows for a few queries (the order of documents tied at the cut aside)
    m, docids = index.impacts(), index.docids
    dense = (queries[:5].astype(np.int64) @ m.T.astype(np.int64)).toarray()
    recall = None
    if engine == "seismic":  # approximate: recall@10 of the exact top 10 (any of the documents tied at the cut)
        hits = 0
        for j in range(5):
            cut = np.sort(dense[j])[::-1][9]
            above = {docids[i] for i in np.flatnonzero(dense[j] > cut)}
            got = search(j)
            hits += len(above & {d for d, _ in got}) + min(10 - len(above), sum(s == cut for _, s in got))
        recall = hits / 50
        assert recall >= 0.8, f"seismic recall@10 {recall} against brute force"
    else:
        got = np.stack([search(j) for j in range(5)])
        want = np.sort(dense, axis=1)[:, ::-1][:, :10].astype(np.float32)
        assert np.array_equal(want, got), "search != brute force"
    row = {"code": label, "engine": engine, "docs": n, "first_search_s": first, "upserts": upserts,
           "recall@10": recall,
           "upsert_ms_p50": float(np.percentile(up, 50)),
           "upsert_ms_p95": float(np.percentile(up, 95)), "search_after_write_ms_p50": float(np.percentile(se, 50)),
           "search_after_write_ms_p95": float(np.percentile(se, 95))}
    row["idle_search_ms_p50"] = p50_ms(search, 50)
    logger.info("%s", row)
    return row


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    p.add_argument("--upserts", type=int, default=200)
    p.add_argument("--label", default="this checkout")
    p.add_argument("--engine", choices=["scipy", "lucene", "seismic"], default="scipy")
    p.add_argument("--workdir", type=Path, default=Path("runs/sparse-upserts"), help="where Lucene indexes go")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import rankstack

    logger.info("rankstack from %s", Path(rankstack.__file__).parent)
    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)
    rows = [run(n, args.upserts, args.label, args.engine, args.workdir) for n in args.sizes]
    table = markdown(rows, ["code", "engine", "docs", "first_search_s", "upserts", "recall@10", "upsert_ms_p50", "upsert_ms_p95", "search_after_write_ms_p50",
                            "search_after_write_ms_p95", "idle_search_ms_p50"])
    print(table)
    save_results(args.out, {"machine": platform.machine(), "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
