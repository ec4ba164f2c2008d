"""What a single-document upsert costs a collection's multi-vector index, at two corpus sizes, old path and new in
one run.

    python benchmarks/multivector_upserts.py [--sizes 5000 50000] [--dim 128] [--tokens 100] [--upserts 200]

The index work only, through the calls the service's slot makes for a write (`rankstack.service.slots.Slot.sync`) (the token encoder is left out:
it costs the same in both paths). `copy` is RankStack <= 0.4: `MultiVectorIndex.replaced` copies the token matrix
without the old version and with the new one, and MUVERA's FDE index is derived again from the whole corpus at the
next MUVERA search (timed here as part of the write). `in-place` is the default now: `MultiVectorIndex.update`
tombstones the old version and appends the new one (O(the document), compaction at 1/8 tombstoned tokens), and the
FDE index removes and adds that one document. Then a MaxSim search and a MUVERA search (candidates=100) of the
updated index are checked against a compact copy built afresh (same top-10 docids), and timed.

PLAID (`plaid:nbits=2`, centroids by PLAID's rule): the copy path derived it again (k-means over the corpus) at the
first PLAID search after any write, timed once per size as `plaid_upsert_ms` of the `copy` row; in place it takes the
write with the centroids it has (`PlaidIndex.update`), and its search is checked against the live tokens compressed
afresh with the same codebook.

Token vectors are synthetic (unit vectors around 64 topics, `--dim` like ColBERT's 128, `--tokens` per document on
average): the work depends on their count and size, not their values.
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
from _table import markdown, save_results  # noqa: E402

logger = logging.getLogger("benchmarks.multivector_upserts")


def encoded(rng, n: int, dim: int, tokens: int, centers: np.ndarray):
    from rankstack.retrieval.token_encoders import EncodedDocuments

    lens = rng.integers(max(1, tokens // 2), tokens * 3 // 2 + 1, n).astype(np.int64)
    total = int(lens.sum())
    vec = centers[rng.integers(0, len(centers), total)] + 0.5 * rng.standard_normal((total, dim), np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return EncodedDocuments(vec.astype(np.float32), lens, rng.integers(0, 30000, total).astype(np.int32))


def run(n: int, dim: int, tokens: int, upserts: int, old_upserts: int) -> list[dict]:
    from rankstack.index.multivector import MultiVectorIndex
    from rankstack.retrieval.kinds.multivector import MultiVectorSettings

    rng = np.random.default_rng(n)
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    docids = [f"d{i}" for i in range(n)]
    base = encoded(rng, n, dim, tokens, centers)
    muvera = MultiVectorSettings.of("muvera:candidates=100")
    plaid_s = MultiVectorSettings.of("plaid:nbits=2")
    queries = [q / np.linalg.norm(q, axis=1, keepdims=True) for q in
               (centers[rng.integers(0, 64, 24)] + 0.5 * rng.standard_normal((24, dim), np.float32)
                for _ in range(8))]
    rows = []
    for mode, count in (("copy", old_upserts), ("in-place", upserts)):
        index = MultiVectorIndex.build(docids, base)
        fde = muvera.derive(index)
        plaid = plaid_s.derive(index) if mode == "in-place" else None
        lat, plaid_lat = [], []
        for j in range(count):
            d = docids[int(rng.integers(0, n))]
            new = encoded(rng, 1, dim, tokens, centers)
            t0 = time.perf_counter()
            if mode == "copy":
                index = index.replaced([d], [d], new)
                fde = muvera.derive(index)
            else:
                fdes = muvera.document_fdes(new)
                index.update([d], [d], new)
                fde.remove([d])
                fde.add([d], fdes)
            lat.append((time.perf_counter() - t0) * 1000)
            if plaid is not None:
                t0 = time.perf_counter()
                plaid.update([d], [d], new)
                plaid_lat.append((time.perf_counter() - t0) * 1000)
        if plaid is None:  # the copy path: PLAID derived again after the writes
            t0 = time.perf_counter()
            plaid = plaid_s.derive(index)
            plaid_lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        exact = [[index.row_docids[r] for r in rr] for rr in index.search(queries, 10)[1]]
        maxsim_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        fresh = index.compacted() if mode == "in-place" else index
        want = [[fresh.row_docids[r] for r in rr] for rr in fresh.search(queries, 10)[1]]
        assert exact == want, "the updated index ranks differently from a compact copy"
        from rankstack.records import Query

        qs = [Query(qid=str(i), text="q") for i in range(len(queries))]
        retr = muvera.retriever(_Fixed(queries, dim), index, fde)
        t0 = time.perf_counter()
        got = [[c.docid for c in r.candidates] for r in retr.retrieve(qs, 10)]
        muvera_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        ref = muvera.retriever(_Fixed(queries, dim), fresh, muvera.derive(fresh))
        assert got == [[c.docid for c in r.candidates] for r in ref.retrieve(qs, 10)], "MUVERA differs from a rebuild"
        from rankstack.index.multivector import PlaidIndex

        pretr = plaid_s.retriever(_Fixed(queries, dim), None, plaid)
        t0 = time.perf_counter()
        got = [[c.docid for c in r.candidates] for r in pretr.retrieve(qs, 10)]
        plaid_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        pref = plaid_s.retriever(_Fixed(queries, dim), None, PlaidIndex.build(fresh, codebook=plaid))
        assert got == [[c.docid for c in r.candidates] for r in pref.retrieve(qs, 10)], "PLAID differs from a rebuild"
        row = {"mode": mode, "docs": n, "tokens": index.n_tokens, "upserts": count,
               "upsert_ms_p50": float(np.percentile(lat, 50)), "upsert_ms_p95": float(np.percentile(lat, 95)),
               "upsert_ms_max": float(np.max(lat)), "maxsim_query_ms": maxsim_ms, "muvera_query_ms": muvera_ms,
               "tombstones": getattr(index, "tombstones", 0), "plaid_upsert_ms": float(np.percentile(plaid_lat, 50)),
               "plaid_query_ms": plaid_ms}
        logger.info("%s", row)
        rows.append(row)
    rows[1]["speedup"] = rows[0]["upsert_ms_p50"] / rows[1]["upsert_ms_p50"]
    rows[1]["plaid_speedup"] = rows[0]["plaid_upsert_ms"] / rows[1]["plaid_upsert_ms"]
    return rows


class _Fixed:
    """A token encoder that hands back prepared query vectors (the benchmark times the index, not a model)."""

    model_name = "synthetic"

    def __init__(self, queries, dim):
        self.queries, self.dim = queries, dim

    def encode_queries(self, texts):
        return self.queries[:len(texts)]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--upserts", type=int, default=200)
    p.add_argument("--old-upserts", type=int, nargs="+", default=[20, 5], help="copy-path upserts per size")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    for i, n in enumerate(args.sizes):
        rows += run(n, args.dim, args.tokens, args.upserts, args.old_upserts[min(i, len(args.old_upserts) - 1)])
    cols = ["mode", "docs", "tokens", "upserts", "upsert_ms_p50", "upsert_ms_p95", "upsert_ms_max", "maxsim_query_ms",
            "muvera_query_ms", "tombstones", "speedup", "plaid_upsert_ms", "plaid_query_ms", "plaid_speedup"]
    table = markdown(rows, cols)
    print(table)
    save_results(args.out, {"machine": platform.machine(), "args": vars(args) | {"out": str(args.out)},
                            "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
