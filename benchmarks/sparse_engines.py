"""Learned sparse retrieval engines side by side: Lucene impact (exact, Pyserini's way), scipy (exact) and Seismic
(approximate), beside BM25, on BEIR SciFact and NFCorpus with the offline SPLADE-tiny encoder.

Per dataset: document encoding throughput (a 256-document sample timed here), index bytes per document, query
encoding latency (SPLADE model vs inference-free IDF), then per engine: QPS at depth 1000 on all test queries
(batched, queries encoded beforehand, so engines are compared on search alone), single-query latency p50/p95
end to end (encode + search, depth 1000), and agreement with the exact run (Lucene vs scipy top-100; Seismic
Recall@10 and Recall@100 against scipy's).

Seismic's settings are chosen once, on queries that are not reported (NFCorpus's dev split; SciFact has no
other split here), and applied to both datasets: the first setting of the grid (fewest posting entries kept,
then fewest query terms, then heap_factor from 0.7 up: a lower heap factor visits more blocks) whose Recall@10
against the exact run is >= 0.99 there.

The sparse index is the one `rankstack eval --pipeline splade` caches (built here when missing).

    python benchmarks/sparse_engines.py [--datasets scifact nfcorpus] [--single 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from rankstack.retrieval.encoders import cached_encoder  # noqa: E402
from rankstack.eval.datasets import load_beir
from rankstack.index.lucene_impact import LuceneImpactIndex, query_dicts
from rankstack.pipeline import DatasetWorkspace
from rankstack.pipeline.resources import SparseSettings
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
from rankstack.index.sparse_seismic import SeismicEngine, captured_stdout
from rankstack.retrieval.sparse import SparseRetriever

from _table import markdown, save_results  # noqa: E402

logger = logging.getLogger("benchmarks.sparse_engines")
TUNE = ("nfcorpus", "dev")
GRID = [(n, qc, hf) for n in (250, 500, 1000, 2000) for qc in (8, 16, 32) for hf in (0.7, 0.8, 0.9, 1.0)]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def recall(approx, exact, k):
    hit = sum(len({d for d, _ in a[:k]} & {d for d, _ in e[:k]}) for a, e in zip(approx, exact))
    return hit / max(sum(min(k, len(e)) for e in exact), 1)


def same_up_to_ties(a, b) -> bool:
    """Equal (docid, score) sets above the lowest score either list holds (ties at the cut may differ)."""
    if not a or not b:
        return a == b
    cut = max(a[-1][1], b[-1][1])
    return {p for p in a if p[1] > cut} == {p for p in b if p[1] > cut} and \
        [s for _, s in a] == [s for _, s in b]


def timed_single(fn, queries):
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        lat.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), 1000 / float(np.mean(lat))


def choose_seismic(data: Path, root: Path) -> dict:
    """The first grid setting with Recall@10 >= 0.99 against exact search on the tuning queries."""
    name, split = TUNE
    tune = load_beir(data / name, split)
    ws = DatasetWorkspace(load_beir(data / name), root)  # the index of the test corpus (same documents)
    s = SparseSettings.of("splade")
    sparse, enc = ws.sparse_index(s), s.encoder(ws.models)
    tq = sparse.quantize_queries(enc.encode_queries([q.text for q in tune.queries.values()]))
    exact, dicts = sparse.docid_pairs(sparse.search(tq, 10)), query_dicts(sparse, tq)
    built, r = {}, 0.0
    for n_postings, qc, hf in GRID:
        if n_postings not in built:
            built[n_postings] = SeismicEngine(*sparse.snapshot(), sparse.vocab, sparse.version, n_postings, 0.4, 1)
        r = recall(built[n_postings].search(dicts, 10, qc, hf, 1), exact, 10)
        logger.info("seismic n_postings=%d query_cut=%d heap_factor=%.1f: Recall@10 %.4f on %s %s", n_postings, qc,
                    hf, r, name, split)
        if r >= 0.99:
            return {"n_postings": n_postings, "query_cut": qc, "heap_factor": hf, "tune_recall@10": r}
    raise SystemExit(f"no Seismic setting of the grid reaches Recall@10 0.99 on {name} {split} (last {r:.4f})")


def bench(data: Path, name: str, root: Path, single: int, chosen: dict) -> tuple[list[dict], dict]:
    ds = load_beir(data / name)
    queries = list(ds.queries.values())
    ws = DatasetWorkspace(ds, root)
    s = SparseSettings.of("splade")
    sparse = ws.sparse_index(s)
    enc = s.encoder(ws.models)
    info: dict = {"dataset": name, "docs": len(sparse), "nnz_per_doc": sparse.impacts().nnz / len(sparse)}

    sample = list(ds.corpus.values())[:256]
    t0 = time.perf_counter()
    enc.encode_documents(sample)
    info["splade_encode_docs_per_s"] = len(sample) / (time.perf_counter() - t0)
    dense_enc = cached_encoder(ws.models, "sentence-transformers/all-MiniLM-L6-v2")
    t0 = time.perf_counter()
    dense_enc.encode_documents(sample)
    info["minilm_encode_docs_per_s"] = len(sample) / (time.perf_counter() - t0)

    texts = [q.text for q in queries]
    t0 = time.perf_counter()
    q_model = sparse.quantize_queries(enc.encode_queries(texts))
    info["query_encode_ms_model"] = (time.perf_counter() - t0) * 1000 / len(texts)
    t0 = time.perf_counter()
    q_idf = sparse.idf_queries(enc.query_tokens(texts))
    info["query_encode_ms_idf"] = (time.perf_counter() - t0) * 1000 / len(texts)

    bm25 = ws.retriever("bm25:threads=1")
    lucene_path = root / name / "bench-lucene-impact"
    lucene = LuceneImpactIndex.build(sparse, lucene_path, meta={"source_version": sparse.signature()})
    info["bytes_per_doc"] = {
        "scipy (impacts.npz)": folder_bytes(root / name / f"splade-{_slug(s)}") / len(sparse),
        "lucene impact": folder_bytes(lucene_path / "lucene") / len(sparse),
        "bm25 lucene": folder_bytes(ws.lucene().lucene_dir) / len(sparse)}

    # exact runs
    exact = {mode: sparse.docid_pairs(sparse.search(q, 1000)) for mode, q in (("model", q_model), ("idf", q_idf))}
    lucene_runs = {mode: lucene.search(query_dicts(sparse, q), 1000)
                   for mode, q in (("model", q_model), ("idf", q_idf))}
    info["lucene_equals_scipy_top100"] = {
        mode: sum(same_up_to_ties(a[:100], b[:100]) for a, b in zip(lucene_runs[mode], exact[mode])) / len(texts)
        for mode in exact}

    retr = {
        "bm25 (Lucene)": bm25,
        "splade lucene impact": SparseRetriever(enc, sparse, engine="lucene", lucene_path=lucene_path),
        "splade scipy": SparseRetriever(enc, sparse),
        "splade seismic": SparseRetriever(enc, sparse, engine="seismic", **chosen),
    }
    seis = retr["splade seismic"].seismic_engine()  # the engine the retriever searches (built once)
    with captured_stdout([]) as printed:
        seis.index.print_space_usage_byte()
    info["seismic_space"] = " ".join(" ".join(printed).split())

    rows = []
    d_model = query_dicts(sparse, q_model)
    engines = {
        "bm25 (Lucene)": (lambda: bm25.retrieve(queries, 1000), None),
        "splade lucene impact": (lambda: lucene.search(d_model, 1000), exact["model"]),
        "splade scipy": (lambda: sparse.docid_pairs(sparse.search(q_model, 1000)), exact["model"]),
        "splade seismic": (lambda: seis.search(d_model, 1000, chosen["query_cut"], chosen["heap_factor"], 1),
                           exact["model"]),
    }
    for label, (fn, ref) in engines.items():
        fn()  # warm (JIT, caches)
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
        r = retr[label]
        r.retrieve(queries[:2], 1000)
        p50, p95, qps1 = timed_single(lambda q: r.retrieve([q], 1000), queries[:single])
        row = {"dataset": name, "engine": label, "qps_search_batched": len(queries) / secs,
               "p50_ms_single": p50, "p95_ms_single": p95, "qps_single": qps1}
        if ref is not None:
            row["R@10_vs_exact"] = recall(out, ref, 10)
            row["R@100_vs_exact"] = recall(out, ref, 100)
        rows.append(row)
    # inference-free queries on the exact engine
    r = SparseRetriever(enc, sparse, query="idf")
    t0 = time.perf_counter()
    sparse.docid_pairs(sparse.search(q_idf, 1000))
    secs = time.perf_counter() - t0
    p50, p95, qps1 = timed_single(lambda q: r.retrieve([q], 1000), queries[:single])
    rows.append({"dataset": name, "engine": "splade-if scipy (IDF queries)", "qps_search_batched": len(queries) / secs,
                 "p50_ms_single": p50, "p95_ms_single": p95, "qps_single": qps1})
    return rows, info


def _slug(s) -> str:
    from rankstack.pipeline.resources import slug

    return slug(s.vectors_key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/beir")
    p.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    p.add_argument("--index-root", type=Path, default=Path(DEFAULT_INDEX_ROOT))
    p.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.data.is_dir():
        print(f"no data at {args.data}: pass --data pointing at a folder of BEIR datasets", file=sys.stderr)
        return 2
    rows, infos = [], []
    chosen = choose_seismic(args.data, args.index_root)
    tune_recall = chosen.pop("tune_recall@10")
    infos.append({"seismic_chosen": chosen, f"recall@10 on {' '.join(TUNE)}": tune_recall})
    for name in args.datasets:
        r, info = bench(args.data, name, args.index_root, args.single, chosen)
        rows += r
        infos.append(info)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, one search thread per engine")
    for info in infos:
        print(info)
    print(markdown(rows, ["dataset", "engine", "qps_search_batched", "p50_ms_single", "p95_ms_single", "qps_single",
                          "R@10_vs_exact", "R@100_vs_exact"], small=1.5))
    save_results(args.out, {"rows": rows, "info": infos})
    return 0


if __name__ == "__main__":
    sys.exit(main())
