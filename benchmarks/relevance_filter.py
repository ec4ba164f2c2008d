"""Relevance filtering (issue 15): adapters fitted on NFCorpus train, measured on NFCorpus test and SciFact test.

For each pipeline (dense, bm25, hybrid-rrf) and method (adapter: query-dependent map after the Cosine Adapter;
logistic: score-distribution baseline), fit on NFCorpus's train split (threshold chosen there, max mean per-query
F1), then cut each test query's top 100 at that threshold. Reported per test set: precision, recall and F1 of the
kept set (means over queries; an empty list has precision 0), the share of queries left with nothing, the mean list
length, the calibration error (ECE, 10 bins, over all top-100 candidates), and a fixed top-k cut whose mean length is
closest to the filter's, with its F1. SciFact's numbers use the NFCorpus adapters unchanged (no SciFact labels seen).

    python benchmarks/relevance_filter.py --data ../shared/data/beir [--out runs/relevance]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from rankstack.retrieval.encoders import cached_encoder  # noqa: E402
from rankstack.eval.datasets import load_beir
from rankstack.pipeline import DatasetWorkspace, compile_pipeline
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
from rankstack.rag.relevance import RelevanceFilter, calibration_error, fit_on_dataset, set_metrics

PIPELINES = {"dense": "dense", "bm25": "bm25", "hybrid-rrf": "rrf(bm25 % 1000, dense % 1000)"}


def measure(stage: RelevanceFilter, pipe, ds) -> dict:
    queries = list(ds.queries.values())
    base = pipe.run(queries, 100, show_progress=False).rankings
    t0 = time.perf_counter()
    kept = stage.apply(base)
    secs = time.perf_counter() - t0
    sm = set_metrics({r.query.qid: r.docids for r in kept}, ds.qrels)
    qd = ds.qrels.to_dict()
    probs, labels = [], []
    for b in base:
        for d, p in stage.last_probabilities.get(b.query.qid, {}).items():
            probs.append(p)
            labels.append(float(qd.get(b.query.qid, {}).get(d, 0) > 0))
    cuts = {k: set_metrics({b.query.qid: b.docids[:k] for b in base}, ds.qrels) for k in range(1, 101)}
    k = min(cuts, key=lambda k: abs(cuts[k]["mean_kept"] - sm["mean_kept"]))
    return {**{m: sm[m] for m in ("P", "R", "F1", "empty", "mean_kept", "microF1")},
            "ECE": calibration_error(np.array(probs), np.array(labels)), "filter_ms_per_query": secs / len(queries) * 1e3,
            "topk": k, "topk_F1": cuts[k]["F1"], "topk_P": cuts[k]["P"], "topk_R": cuts[k]["R"],
            "topk_mean_kept": cuts[k]["mean_kept"], "queries": sm["queries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/beir")
    ap.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    ap.add_argument("--out", default="runs/relevance")
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data, out = Path(args.data), Path(args.out)
    train = load_beir(data / "nfcorpus", "train")
    tests = {"nfcorpus": load_beir(data / "nfcorpus", "test"), "scifact": load_beir(data / "scifact", "test")}
    wtrain = DatasetWorkspace(train, args.index_root)
    wtests = {n: DatasetWorkspace(ds, args.index_root, models=wtrain.models) for n, ds in tests.items()}
    rows = []
    for pname in args.pipelines:
        spec = PIPELINES[pname]
        for method in ("adapter", "logistic"):
            t0 = time.perf_counter()
            model = fit_on_dataset(train, spec, method=method, workspace=wtrain, show_progress=False)
            fit_s = time.perf_counter() - t0
            path = model.save(out / f"nfcorpus-train-{pname}-{method}.json")
            for tname, ds in tests.items():
                ws = wtests[tname]
                stage = RelevanceFilter(path, encoder=cached_encoder(ws.models, model.encoder) if model.encoder else None)
                r = measure(stage, compile_pipeline(spec, ws), ds)
                rows.append({"test": tname, "pipeline": pname, "method": method, "threshold": model.threshold,
                             "fit_seconds": fit_s, "adapter_bytes": path.stat().st_size, **r})
                print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    head = ("| test | pipeline | method | thr | P | R | F1 | empty | kept | ECE | top-k (same mean length) | "
            "top-k F1 | F1 gain |")
    print("\n" + head + "\n|" + "---|" * 13)
    for r in rows:
        print(f"| {r['test']} | {r['pipeline']} | {r['method']} | {r['threshold']:.2f} | {r['P']:.4f} | {r['R']:.4f} | "
              f"{r['F1']:.4f} | {r['empty']:.3f} | {r['mean_kept']:.1f} | {r['ECE']:.4f} | top-{r['topk']} "
              f"({r['topk_mean_kept']:.1f}) | {r['topk_F1']:.4f} | {r['F1'] - r['topk_F1']:+.4f} |")


if __name__ == "__main__":
    main()
