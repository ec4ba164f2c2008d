"""Multi-vector retrieval (issue 13) on BEIR SciFact and NFCorpus, with the offline token encoder (MiniLM's
normalised token vectors: every part of the stack on real text, but not ColBERT's quality).

Per dataset, one run on one machine:
1. Quality: BM25, dense MiniLM, exact MaxSim over the corpus, MaxSim reranking the BM25 + dense RRF top 100, and
   ColBERT-PRF (reranking MaxSim's top 1000) against MaxSim with paired p-values. All through pipeline specs.
2. MaxSim as a reranker at depth 100 (torch path, stored tokens): queries per second.
3. MUVERA: Recall@100 against exact MaxSim's top 100 for several FDE sizes and numbers of rescored candidates,
   searched in a flat FDE index; the smallest setting reaching 0.95, its latency and memory, and it under HNSW/PQ.
4. PLAID-style compression at 1, 2 and 4 bits: bytes per token, nDCG@10 kept against the uncompressed tokens, and
   Recall@100 against exact MaxSim as a function of the documents decompressed and scored; candidates needed for
   0.95 recall beside MUVERA's.

    python benchmarks/multivector.py --data ../shared/data/beir [--datasets scifact nfcorpus] [--out runs/multivector]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from _table import markdown, save_results
from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.eval.significance import compare_per_query
from rankstack.index.base import IndexSpec
from rankstack.index.multivector import PlaidIndex
from rankstack.kernels.topk_heap import rows_topk
from rankstack.index.muvera import FDEConfig, document_fdes, query_fdes
from rankstack.index.registry import build_vector_index
from rankstack.pipeline import DatasetWorkspace, compile_pipeline
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
from rankstack.records import Run
from rankstack.retrieval.kinds.multivector import MultiVectorSettings

METRICS = ("nDCG@10", "R@100")
PIPELINES = {
    "bm25": "bm25",
    "dense (MiniLM)": "dense",
    "maxsim (exact)": "maxsim",
    "hybrid-rrf top100": "rrf(bm25 % 100, dense % 100) % 100",
    "hybrid-rrf >> maxsim@100": "rrf(bm25 % 100, dense % 100) % 100 >> maxsim:depth=100",
    "maxsim >> colbert-prf": "maxsim % 1000 >> colbert-prf:depth=1000",
}
FDE_CONFIGS = [FDEConfig(k_sim=3, d_proj=16, reps=10), FDEConfig(k_sim=4, d_proj=16, reps=20),
               FDEConfig(k_sim=5, d_proj=16, reps=20), FDEConfig(k_sim=5, d_proj=32, reps=20)]
CANDIDATES = [100, 200, 300, 500, 1000, 2000]
PLAID_CANDIDATES = [100, 300, 1000]
SWEEP = 100  # queries of the PLAID candidate sweep


def recall_vs(rows: list[np.ndarray], exact: np.ndarray, k: int = 100) -> float:
    return float(np.mean([len(set(map(int, r[:k])) & set(map(int, e[:k]))) / k for r, e in zip(rows, exact)]))


def ndcg(rows, scores, docids, queries, qrels) -> float:
    run = Run(scores={q.qid: {docids[int(r)]: float(s) for r, s in zip(rr[:100], ss[:100])}
                      for q, rr, ss in zip(queries, rows, scores)})
    return evaluate(run, qrels, ["nDCG@10"]).aggregate["nDCG@10"]


def quality(ds, ws, out: dict) -> list[dict]:
    queries = list(ds.queries.values())
    rows, per = [], {}
    for name, spec in PIPELINES.items():
        pipe = compile_pipeline(spec, ws)
        t0 = time.perf_counter()
        res = pipe.run(queries, 100, show_progress=False)
        secs = time.perf_counter() - t0
        ev = evaluate(res.run(), ds.qrels, list(METRICS))
        per[name] = ev.per_query
        row = {"dataset": ds.name, "pipeline": name, **ev.aggregate, "ms/query": secs / len(queries) * 1e3}
        rerank = {k: v for k, v in res.timings.items() if k.startswith("rerank")}
        if rerank:
            row["rerank ms/query"] = sum(rerank.values()) / len(queries) * 1e3
        rows.append(row)
        logging.getLogger("bench").warning("%s %s %s", ds.name, name, row)
    base = per["maxsim (exact)"]
    for m in METRICS:
        t = compare_per_query(base[m], per["maxsim >> colbert-prf"][m])
        out.setdefault("prf", []).append({"dataset": ds.name, "metric": m, "maxsim": t.mean_a, "colbert-prf": t.mean_b,
                                          "delta": t.delta, "p (t-test)": t.p_ttest,
                                          "p (randomization)": t.p_randomization})
    for m in METRICS:
        t = compare_per_query(per["hybrid-rrf top100"][m], per["hybrid-rrf >> maxsim@100"][m])
        out.setdefault("rerank", []).append({"dataset": ds.name, "metric": m, "hybrid": t.mean_a,
                                             "hybrid >> maxsim": t.mean_b, "delta": t.delta, "p (t-test)": t.p_ttest})
    return rows


def reranker_qps(ds, ws) -> dict:
    """MaxSim over 100 stored candidates per query, timed alone (query encoding included)."""
    from rankstack.rerank.maxsim import MaxSimReranker

    queries = list(ds.queries.values())
    cands = compile_pipeline("rrf(bm25 % 100, dense % 100) % 100", ws).run(queries, 100, show_progress=False).rankings
    reranker, _ = ws.reranker("maxsim")
    assert isinstance(reranker, MaxSimReranker) and reranker.index is not None
    t0 = time.perf_counter()
    reranker.rerank_batch(cands)
    secs = time.perf_counter() - t0
    return {"dataset": ds.name, "depth": 100, "queries": len(queries), "QPS": len(queries) / secs,
            "ms/query": secs / len(queries) * 1e3}


TIMED = 30  # queries whose exact rescoring is timed (recall uses every query, looked up in the exact score matrix)


def rescored(exact_all: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``[B, c]`` rescored exactly (looked up in the full MaxSim matrix), best first."""
    sc = np.take_along_axis(exact_all, cand, 1)
    order = np.lexsort((cand, -sc), axis=1)
    return np.take_along_axis(sc, order, 1), np.take_along_axis(cand, order, 1)


def timed_rescoring(index, qtok, cand) -> float:
    t0 = time.perf_counter()
    index.score(qtok[:TIMED], cand[:TIMED])
    return (time.perf_counter() - t0) / min(TIMED, len(cand)) * 1e3


def muvera(ds, ws, index, qtok, exact_all, exact_rows, out: dict) -> tuple[list[dict], dict]:
    queries = list(ds.queries.values())
    rows = []
    best = None
    for cfg in FDE_CONFIGS:
        t0 = time.perf_counter()
        fdes = document_fdes(index.tokens, index.offsets, cfg)
        build_s = time.perf_counter() - t0
        flat = build_vector_index(IndexSpec("flat"), index.docids, fdes)
        t0 = time.perf_counter()
        qf = query_fdes(qtok, cfg)
        topk = flat.search(qf, max(CANDIDATES))
        search_ms = (time.perf_counter() - t0) / len(queries) * 1e3
        fde_rows = np.stack([index.rows([d for d, _ in ps]) for ps in flat.docid_pairs(topk)])
        row = {"dataset": ds.name, "fde": cfg.label(), "dim": fdes.shape[1], "bytes/doc": fdes.shape[1] * 4,
               "build s": build_s, "FDE search ms/q": search_ms,
               "R@100 (no rescoring)": recall_vs(list(fde_rows), exact_rows)}
        for c in CANDIDATES:
            sc, rr = rescored(exact_all, fde_rows[:, :c])
            rec = recall_vs(list(rr), exact_rows)
            row[f"R@100 c={c}"] = rec
            if rec >= 0.95 and (best is None or (c, fdes.shape[1]) < (best["candidates"], best["dim"])):
                best = {"dataset": ds.name, "fde": cfg.label(), "dim": fdes.shape[1], "candidates": c,
                        "R@100 vs exact": rec, "nDCG@10": ndcg(rr, sc, index.docids, queries, ds.qrels),
                        "ms/query (FDE search + rescoring)": search_ms + timed_rescoring(index, qtok,
                                                                                         fde_rows[:, :c]),
                        "FDE bytes/doc": fdes.shape[1] * 4}
        rows.append(row)
        logging.getLogger("bench").warning("muvera %s", row)
    # the chosen setting through the pipeline, under three single-vector index kinds
    if best is not None:
        cfg = next(c for c in FDE_CONFIGS if c.label() == best["fde"])
        row_of = index.row_of
        for kind in ("flat", "hnsw", f"pq:m={min(256, best['dim'] // 8)},nbits=8"):
            spec = (f"muvera:k_sim={cfg.k_sim},d_proj={cfg.d_proj},reps={cfg.reps},candidates={best['candidates']},"
                    f"index=({kind})")
            pipe = compile_pipeline(spec, ws)
            t0 = time.perf_counter()
            res = pipe.run(queries[:TIMED], 100, show_progress=False)
            secs = time.perf_counter() - t0
            res = pipe.run(queries, 100, show_progress=False)
            rr = [np.array([row_of[d] for d in r.docids]) for r in res.rankings]
            fde_index = ws.derived_index(MultiVectorSettings.of(spec))
            out.setdefault("muvera_indexes", []).append({
                "dataset": ds.name, "spec": spec, "R@100 vs exact": recall_vs(rr, exact_rows),
                "nDCG@10": evaluate(res.run(), ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                "ms/query (pipeline)": secs / TIMED * 1e3, "FDE index MB": fde_index.memory_bytes() / 2**20})
            logging.getLogger("bench").warning("muvera index %s", out["muvera_indexes"][-1])
    return rows, best


def plaid(ds, ws, index, qtok, exact_rows, exact_ndcg, out: dict) -> list[dict]:
    """Compression loss at 1/2/4 bits (every document decompressed and scored, all queries), then PLAID's
    candidate generation at 2 bits on the first :data:`SWEEP` queries: recall against the exhaustive ranking over the
    same codes (what candidate generation loses) and against exact MaxSim (what both lose)."""
    from rankstack.index.multivector import MultiVectorIndex

    queries = list(ds.queries.values())
    base = ws.derived_index(MultiVectorSettings.of("plaid:nbits=2"))  # cached: k-means once
    rows = []
    for nbits in (1, 2, 4):
        p = base if nbits == 2 else PlaidIndex.build(index, nbits=nbits, like=base)
        parts = [p.decompress(s, min(s + 262_144, index.n_tokens)).astype(np.float16)
                 for s in range(0, index.n_tokens, 262_144)]
        dec = MultiVectorIndex(index.docids, np.concatenate(parts), index.offsets, index.token_ids)
        s_all, r_all = dec.search(qtok, 100)
        row = {"dataset": ds.name, "nbits": nbits, "bytes/token": p.bytes_per_token(),
               "vs fp16": p.bytes_per_token() / index.bytes_per_token(), "centroids": len(p.centroids),
               "nDCG@10 exhaustive": ndcg(r_all, s_all, p.docids, queries, ds.qrels), "nDCG@10 exact": exact_ndcg,
               "R@100 exhaustive vs exact": recall_vs(list(r_all), exact_rows)}
        row["nDCG@10 change"] = row["nDCG@10 exhaustive"] - exact_ndcg
        rows.append(row)
        logging.getLogger("bench").warning("plaid %s", row)
        if nbits == 2:
            sweep = {"dataset": ds.name, "nbits": 2, "queries": SWEEP, "nprobe": 4}
            for c in PLAID_CANDIDATES:
                t0 = time.perf_counter()
                _, r, st = p.search(qtok[:SWEEP], 100, nprobe=4, candidates=c)
                sweep[f"ms/q c={c}"] = (time.perf_counter() - t0) / SWEEP * 1e3
                sweep[f"R@100 vs exhaustive c={c}"] = recall_vs(r, list(r_all[:SWEEP]))
                sweep[f"R@100 vs exact c={c}"] = recall_vs(r, exact_rows[:SWEEP])
            sweep["generated/query"] = st["generated"] / SWEEP
            out.setdefault("plaid_sweep", []).append(sweep)
            logging.getLogger("bench").warning("plaid sweep %s", sweep)
    return rows


PRF_GRID = [{"fb_embs": 10, "beta": b} for b in (0.1, 0.25, 0.5, 1.0)]


def tune_prf(data: Path, index_root: str) -> list[dict]:
    """ColBERT-PRF's beta on NFCorpus's dev split (never the test queries reported): nDCG@10 of each setting
    reranking MaxSim's top 1000, beside MaxSim alone."""
    ds = load_beir(data / "nfcorpus", "dev")
    ws = DatasetWorkspace(ds, index_root)
    queries = list(ds.queries.values())
    base = compile_pipeline("maxsim % 1000", ws).run(queries, 1000, show_progress=False).rankings
    rows = [{"split": "nfcorpus dev", "setting": "maxsim", "nDCG@10": evaluate(
        Run.from_rankings(base), ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"]}]
    for g in PRF_GRID:
        reranker, _ = ws.reranker(f"colbert-prf:fb_embs={g['fb_embs']},beta={g['beta']}")
        t0 = time.perf_counter()
        out = reranker.rerank_batch(base)
        secs = time.perf_counter() - t0
        rows.append({"split": "nfcorpus dev", "setting": f"colbert-prf fb_embs={g['fb_embs']} beta={g['beta']}",
                     "nDCG@10": evaluate(Run.from_rankings(out), ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                     "ms/query": secs / len(queries) * 1e3})
        logging.getLogger("bench").warning("prf dev %s", rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/beir")
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    ap.add_argument("--out", default="runs/multivector")
    ap.add_argument("--skip", nargs="*", default=[], choices=["quality", "muvera", "plaid", "qps"])
    ap.add_argument("--tune-prf", action="store_true", help="only choose ColBERT-PRF's beta on NFCorpus dev")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out: dict = {}
    if args.tune_prf:
        rows = tune_prf(Path(args.data), args.index_root)
        save_results(args.out, {"prf_dev": rows})
        print(markdown(rows, list(dict.fromkeys(c for r in rows for c in r))))
        return
    for name in args.datasets:
        ds = load_beir(Path(args.data) / name)
        ws = DatasetWorkspace(ds, args.index_root)
        s = MultiVectorSettings.of("maxsim")
        index = ws.token_index(s)
        encoder = s.encoder(ws.models)
        queries = list(ds.queries.values())
        qtok = encoder.encode_queries([q.text for q in queries])
        t0 = time.perf_counter()
        exact_all = index.score_all(qtok)
        exact_ms = (time.perf_counter() - t0) / len(queries) * 1e3
        exact_s, exact_r = rows_topk(exact_all, 100)
        exact_rows = list(exact_r)
        exact_ndcg = ndcg(exact_r, exact_s, index.docids, queries, ds.qrels)
        out.setdefault("corpus", []).append({
            "dataset": name, "docs": len(index), "tokens": index.n_tokens, "tokens/doc": index.n_tokens / len(index),
            "truncated docs": index.meta.get("truncated_documents"), "fp16 bytes/token": index.bytes_per_token(),
            "token store MB": index.n_tokens * index.bytes_per_token() / 2**20, "exact MaxSim ms/query": exact_ms,
            "encode docs/s": ws.stats.get("multivector", {}).get("encode_docs_per_s")})
        if "quality" not in args.skip:
            out.setdefault("quality", []).extend(quality(ds, ws, out))
        if "qps" not in args.skip:
            out.setdefault("qps", []).append(reranker_qps(ds, ws))
        if "muvera" not in args.skip:
            rows, best = muvera(ds, ws, index, qtok, exact_all, exact_rows, out)
            out.setdefault("muvera", []).extend(rows)
            out.setdefault("muvera_best", []).append(best or {"dataset": name, "fde": "none reached 0.95"})
        if "plaid" not in args.skip:
            out.setdefault("plaid", []).extend(plaid(ds, ws, index, qtok, exact_rows, exact_ndcg, out))
        save_results(args.out, out)
    for key, rows in out.items():
        if rows:
            cols = list(dict.fromkeys(c for r in rows for c in r))
            print(f"\n### {key}\n")
            print(markdown(rows, cols))


if __name__ == "__main__":
    main()
