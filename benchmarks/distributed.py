"""Sharded indexing and search on Ray (issue 16), on this machine (a one-machine Ray; more worker processes than
cores buy nothing, so the numbers are about overheads and scaling shape, not a cluster's throughput).

1. Build throughput against the number of Ray workers (1, 2): SciFact in 4 shards, BM25 only (all 5,183
   documents) and BM25 + dense MiniLM (the first ``--dense-docs`` documents: MiniLM encodes ~14 passages/s here).
2. Search: queries per second of the single index (BM25 matrix engine, FAISS flat, SPLADE-tiny impacts with the
   exact scipy engine, the latter two on the subset), of the same collection in 4
   shards served in-process, and served by Ray actors (1 replica per shard) -- the sharded path's overhead at one
   worker; and with the runs checked equal to the single index's.
3. Query workers (``rankstack eval --workers N``): a whole evaluation batch (BM25 + dense MiniLM fused by RRF) at
   1 and 2 Ray workers against the local path, same run.
4. Bytes per document of each shard index kind (for docs/scale.md).
5. ``--scaling``: how one BM25 shard's per-query time grows with its size (SciFact's corpus repeated 1, 4 and
   16 times under new docids), the number docs/scale.md extrapolates from; runs on its own.

    python benchmarks/distributed.py --data ../shared/data/beir [--dense-docs 600] [--out runs/distributed]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from _table import markdown, save_results
from rankstack.eval.datasets import load_beir
from rankstack.pipeline import DatasetWorkspace, compile_pipeline
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _same(a, b, tol=1e-5) -> bool:
    return all(len(x.candidates) == len(y.candidates) and all(
        abs(c.score - d.score) <= tol for c, d in zip(x.candidates, y.candidates)) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/beir")
    ap.add_argument("--dense-docs", type=int, default=600)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--out", default="runs/distributed")
    ap.add_argument("--scaling", action="store_true", help="only part 5: BM25 shard time against shard size")
    args = ap.parse_args()
    if args.scaling:
        return _scaling(Path(args.data), Path(args.out))
    logging.basicConfig(level=logging.WARNING)

    from rankstack.distributed.build import build_sharded
    from rankstack.distributed.cluster import init
    from rankstack.distributed.queries import QueryPool
    from rankstack.distributed.sharded import ShardedResources

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_beir(Path(args.data) / "scifact")
    docs = list(ds.corpus.values())
    queries = list(ds.queries.values())
    init(num_cpus=2, include_dashboard=False, logging_level="WARNING")

    # 1. build throughput
    build_rows = []
    for name, kinds, subset in (("bm25", ("bm25",), docs), ("bm25+dense MiniLM", ("bm25", "dense"),
                                                             docs[: args.dense_docs])):
        for workers in (1, 2):
            t0 = time.perf_counter()
            idx = build_sharded(subset, out / f"build-{len(kinds)}-{workers}", shards=args.shards, indexes=kinds,
                                address="auto", workers=workers, batch_size=32)
            secs = time.perf_counter() - t0
            build_rows.append({"indexes": name, "documents": len(subset), "workers": workers, "seconds": secs,
                               "docs/s": len(subset) / secs})
            print(build_rows[-1], flush=True)
    sizes = {}
    idx = build_sharded(docs, out / "full", shards=args.shards, indexes=("bm25", "dense"), model="hash:384",
                        address="auto", workers=2)  # bytes/doc of every kind over the whole corpus (hash: no wait)
    n = len(docs)
    sh = [idx.path / s["name"] for s in idx.shards]
    sizes = {"docstore": sum(_size(p / "docs") for p in sh) / n, "bm25 postings": sum(_size(p / "bm25") for p in sh) / n,
             "dense flat (384-d float32)": sum(_size(p / "dense") for p in sh) / n,
             "bm25 collection stats (per collection)": _size(idx.path / "bm25-stats")}

    # 2. search: single index vs shards in-process vs shards on Ray actors (same runs)
    ws = DatasetWorkspace(ds, DEFAULT_INDEX_ROOT)
    dense_idx = build_sharded(docs[: args.dense_docs], out / "dense-sub", shards=args.shards,
                              indexes=("bm25", "dense", "splade"), address="auto", workers=2)
    shd = [dense_idx.path / s["name"] for s in dense_idx.shards]
    splade = next(e.folder for e in dense_idx.entries if e.spec == "splade")
    sizes[f"splade impacts (SPLADE-tiny, {args.dense_docs} docs)"] = sum(_size(p / splade) for p in shd) / args.dense_docs
    from rankstack.eval.datasets import BeirDataset

    sub = BeirDataset(name="scifact-sub", split="test", corpus={d.docid: d for d in docs[: args.dense_docs]},
                      queries=ds.queries, qrels=ds.qrels)
    ws_sub = DatasetWorkspace(sub, out / "ws-sub")
    search_rows = []
    for label, single, spec, sharded_path, k in (("bm25 (5,183 docs)", ws, "bm25:engine=matrix", idx, 1000),
                                                 (f"dense MiniLM ({args.dense_docs} docs)", ws_sub, "dense",
                                                  dense_idx, 100),
                                                 (f"splade SPLADE-tiny ({args.dense_docs} docs)", ws_sub, "splade",
                                                  dense_idx, 100)):
        base = single.retriever(spec)
        base.retrieve(queries[:5], k)
        t0 = time.perf_counter()
        want = base.retrieve(queries, k)
        t_single = time.perf_counter() - t0
        row = {"retriever": label, "k": k, "single QPS": len(queries) / t_single}
        for where, address in (("in-process", None), ("Ray actors", "auto")):
            res = ShardedResources(sharded_path, address=address)
            r = res.retriever(spec.split(":")[0])
            r.retrieve(queries[:5], k)
            t0 = time.perf_counter()
            got = r.retrieve(queries, k)
            secs = time.perf_counter() - t0
            row[f"{where} QPS"] = len(queries) / secs
            row[f"{where} / single"] = t_single / secs
            row[f"{where} equal"] = _same(got, want)
            res.close()
        search_rows.append(row)
        print(row, flush=True)

    # 3. query workers over a whole eval batch: hybrid (BM25 + MiniLM, RRF) over the sharded subset
    pool_rows = []
    spec = "hybrid-rrf"
    local = compile_pipeline(spec, ShardedResources(dense_idx))
    local.run(queries[:5], 100)
    t0 = time.perf_counter()
    want = local.run(queries, 100).rankings
    t_local = time.perf_counter() - t0
    single = compile_pipeline(spec, ws_sub).run(queries, 100).rankings
    pool_rows.append({"path": "local (no Ray)", "workers": 1, "seconds": t_local, "QPS": len(queries) / t_local,
                      "same run": _same(want, single)})
    for workers in (1, 2):
        pool = QueryPool({"sharded": str(dense_idx.path.resolve())}, address="auto", workers=workers, chunk=16)
        pool.run(spec, queries[:5], 100)
        t0 = time.perf_counter()
        got = pool.run(spec, queries, 100).rankings
        secs = time.perf_counter() - t0
        pool.close()
        pool_rows.append({"path": "Ray query workers", "workers": workers, "seconds": secs,
                          "QPS": len(queries) / secs, "same run": _same(got, want, tol=0.0)})
        print(pool_rows[-1], flush=True)
    save_results(out, {"build": build_rows, "search": search_rows, "pool": pool_rows, "bytes_per_doc": sizes})
    print("\n## Build (4 shards)\n" + markdown(build_rows, ["indexes", "documents", "workers", "seconds", "docs/s"]))
    print("\n## Search\n" + markdown(search_rows, list(search_rows[0])))
    print("\n## Query workers\n" + markdown(pool_rows, ["path", "workers", "seconds", "QPS", "same run"]))
    print("\n## Bytes per document\n" + "\n".join(f"- {k}: {v:,.0f}" for k, v in sizes.items()))


def _scaling(data: Path, out: Path) -> None:
    """One shard's BM25 (collection statistics as its own, top-1000) at 1x, 4x and 16x SciFact's corpus."""
    from rankstack.index.bm25_matrix import BM25Matrix
    from rankstack.records import Document

    logging.basicConfig(level=logging.WARNING)
    ds = load_beir(data / "scifact")
    docs = list(ds.corpus.values())
    queries = [q.text for q in ds.queries.values()]
    rows = []
    for copies in (1, 4, 16):
        corpus = [Document(docid=f"{d.docid}#{c}", title=d.title, text=d.text) for c in range(copies) for d in docs]
        t0 = time.perf_counter()
        m = BM25Matrix.build(corpus)
        build_s = time.perf_counter() - t0
        m.search(queries[:5], 1000)
        t0 = time.perf_counter()
        m.search(queries, 1000)
        secs = time.perf_counter() - t0
        rows.append({"documents": len(corpus), "build s": build_s, "ms/query": 1000 * secs / len(queries),
                     "QPS (1 thread)": len(queries) / secs})
        print(rows[-1], flush=True)
    save_results(out / "scaling", {"bm25_shard_scaling": rows})
    print(markdown(rows, list(rows[0])))


if __name__ == "__main__":
    main()
