"""Compressed LLM rerankers on TREC DL19 (issue 11): one row per (reranker, weights, kv, compute dtype) against the
float32 model.

Every row builds its reranker from a spec string (``icr:depth=20,weights=int8,kv=int4``), exactly as pipelines,
``rankstack rerank`` and the service do, and reranks the BM25 top-100's top ``depth`` of the 43 judged queries.
Columns: nDCG@10, its change against the same reranker on the float32 model (paired randomization test), the
decoder's linear-weight bytes (and their ratio to float32), KV bytes per token of the cache format (ratio to a bf16
cache), and prefill (forward-pass) seconds per query. ICR's prompt order is the authors' (``retriever-last``)
unless a row says otherwise.

    python benchmarks/llm_compression.py --queries 43 --rows icr:fp32 icr:int8 first:fp32 first:int8 ...
    python benchmarks/llm_compression.py --queries 43 --compute bf16 --rows icr:fp32 icr:int8 ...  (bf16 activations)
    (a row is reranker[@depth]:weights[:kv[:order[:attention]]], e.g. icr:int4-g32-outliers:int4 or
    icr@100:fp32:fp32::passage-block; or spec=<a reranker spec>, e.g.
    "spec=icr:depth=20,attention=duo,full_heads=18.7;18.8,window_tokens=128")

A float32 row already run by ``benchmarks/llm_rerank_dl19.py`` (same reranker, same queries) can stand in for the
baseline instead of running it again (its per-query nDCG@10 and seconds are taken as they are; the byte columns
are the float32 model's):

    python benchmarks/llm_compression.py --queries 43 --baseline-from runs/w100 \
        icr:depth=100,window=20,stride=10,passage_tokens=64 --rows "spec=...,weights=int8"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from rankstack.errors import BadInput
from rankstack.eval.datasets import load_trec_dl
from rankstack.eval.metrics import evaluate
from rankstack.eval.significance import compare_per_query
from rankstack.pipeline import Given, Pipeline, Rerank
from rankstack.records import Qrels, Run
from rankstack.models import ModelCache
from rankstack.rerank.factory import build_reranker
from rankstack.rerank.llm.quant import linear_weight_bytes

logger = logging.getLogger("benchmarks.llm_compression")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if sys.argv[1:2] == ["--table"]:  # print the table of what is saved, e.g. --table runs/llm_sparse.json smollm2
        path, model = Path(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else "smollm2")
        print(table(json.loads(path.read_text()), model))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--rows", nargs="*", default=[])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--compute", default="fp32", choices=("fp32", "bf16"),
                   help="compute dtype of the short-form rows (spec= rows say compute= themselves)")
    p.add_argument("--queries", type=int, default=43)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "llm_compression.json")
    p.add_argument("--baseline-from", nargs=2, metavar=("DIR", "SPEC"), default=None,
                   help="an llm_rerank_dl19.py --out folder whose one reranker run is the float32 row for SPEC")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    dl = load_trec_dl(args.data / "trec-dl" / "dl19")
    judged = set(dl.qrels.judgments)
    rankings = [r for r in dl.candidates if r.query.qid in judged][: args.queries]
    keep = {r.query.qid for r in rankings}
    qrels = Qrels(judgments={q: dict(j) for q, j in dl.qrels.judgments.items() if q in keep})
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.baseline_from:
        key = f"{args.model}|imported {args.baseline_from[1]}"
        results[key] = imported_baseline(Path(args.baseline_from[0]), args.baseline_from[1], args.model, keep)
        save(args.out, results, key)
    for row in args.rows:
        if row.startswith("spec="):  # a whole reranker spec, for options the short form lacks (full_heads...)
            from rankstack.rerank.factory import RerankerSpec

            rs = RerankerSpec.parse(row[5:])
            o = dict(rs.options)
            kind, depth = rs.kind, rs.depth or args.depth
            weights, kv, order, attention = (o.get("weights", "fp32"), o.get("kv", "fp32"), o.get("order", ""),
                                             o.get("attention", ""))
            compute = o.get("compute", "fp32")
            spec = f"{row[5:]},model={args.model}" + ("" if rs.depth else f",depth={depth}")
        else:
            parts = row.split(":")
            kind, weights, kv, order, attention = (parts + ["fp32", "fp32", "", ""][len(parts) - 1:])[:5]
            kind, _, d = kind.partition("@")
            depth = int(d or args.depth)
            spec = f"{kind}:model={args.model},depth={depth},weights={weights},kv={kv}"
            compute = args.compute
            if compute != "fp32":
                spec += f",compute={compute}"
            if order:
                spec += f",order={order}"
            if attention:
                spec += f",attention={attention}"
        models = ModelCache()
        t0 = time.perf_counter()
        try:
            rr = build_reranker(spec, models)
        except BadInput as exc:  # e.g. a group size that does not divide the model's dimensions: a row saying so
            logger.warning("%s: %s", spec, exc)
            results[f"{args.model}|{row}"] = {"spec": spec, "model": args.model, "reranker": kind, "weights": weights,
                                              "kv": kv, "compute": compute, "order": order or "retriever-last",
                                              "depth": depth,
                                              "attention": attention or "dense", "error": str(exc)}
            save(args.out, results, f"{args.model}|{row}")
            continue
        load_s = time.perf_counter() - t0
        llm = rr.llm
        stage = Rerank(rr, depth)
        out, stats = [], []
        t0 = time.perf_counter()
        for i, r in enumerate(rankings):
            out += Pipeline(Given([r]), [stage]).run([r.query], len(r.candidates)).rankings
            stats += rr.last_stats
            logger.info("%s query %d/%d", spec, i + 1, len(rankings))
        wall = time.perf_counter() - t0
        res = evaluate(Run.from_rankings(out), qrels, ["nDCG@10"], drop_self=False)
        # counted after the run: int4 layers that ran generation hold the fused kernel's copy of their codes too
        linear_bytes = linear_weight_bytes(llm.model)
        results[f"{args.model}|{row}"] = {
            "spec": spec, "model": args.model, "reranker": kind, "weights": weights, "kv": kv, "compute": compute,
            "order": order or "retriever-last", "depth": depth, "attention": attention or "dense",
            "attention_blocks": sum(s.attention_blocks for s in stats), "dense_blocks": sum(s.dense_blocks for s in stats),
            "prompt_tokens_per_q": sum(s.prompt_tokens for s in stats) / len(stats),
            "queries": len(rankings), "nDCG@10": res.aggregate["nDCG@10"],
            "per_query": dict(res.per_query["nDCG@10"]), "linear_bytes": linear_bytes,
            "linear_ratio": linear_bytes / llm.weight_stats["fp32_linear_bytes"],
            "kv_bytes_per_token": llm.kv_bytes_per_token(),
            "kv_ratio_bf16": llm.kv_bytes_per_token() / llm.kv_bytes_per_token("bf16"),
            "seconds_per_q": wall / len(rankings), "load_seconds": load_s}
        save(args.out, results, f"{args.model}|{row}")
        logger.info("%s: nDCG@10 %.4f, %.1f s/q", spec, res.aggregate["nDCG@10"], wall / len(rankings))
    print(table(json.loads(args.out.read_text()) if args.out.exists() else results, args.model))
    return 0


def imported_baseline(folder: Path, spec: str, model: str, queries: set[str]) -> dict:
    """The float32 row for ``spec`` from an ``llm_rerank_dl19.py`` run in ``folder`` (its one reranker run, on
    exactly ``queries``); the byte columns come from loading the float32 model."""
    from rankstack.rerank.factory import RerankerSpec

    details = [d for d in json.loads((folder / "results.json").read_text())["details"]]
    if len(details) != 1:
        raise SystemExit(f"{folder} holds {len(details)} reranker runs; --baseline-from needs a folder with one")
    d = details[0]
    per_query = d["per_query_nDCG@10"]
    if set(per_query) != queries:
        raise SystemExit(f"{folder} ran {len(per_query)} queries, not the {len(queries)} asked for here")
    spec = spec.removeprefix("spec=")
    rs = RerankerSpec.parse(spec)
    full = f"{spec},model={model}"
    llm = build_reranker(full, ModelCache()).llm
    seconds = sum(q["seconds"] for q in d["stats"]) / len(d["stats"])  # per-query reranking seconds
    return {"spec": full, "model": model, "reranker": rs.kind, "weights": "fp32", "kv": "fp32",
            "order": dict(rs.options).get("order", "retriever-last"), "depth": rs.depth, "attention": "dense",
            "queries": len(per_query), "nDCG@10": sum(per_query.values()) / len(per_query), "per_query": per_query,
            "linear_bytes": llm.weight_stats["linear_bytes"], "linear_ratio": llm.weight_stats["ratio"],
            "kv_bytes_per_token": llm.kv_bytes_per_token(),
            "kv_ratio_bf16": llm.kv_bytes_per_token() / llm.kv_bytes_per_token("bf16"),
            "seconds_per_q": seconds,
            "source": f"{folder} ({d['run']}, llm_rerank_dl19.py)"}


def save(path: Path, results: dict, key: str) -> None:
    """Write ``results[key]`` into the JSON at ``path``, re-read first: two benchmark processes may share the file
    (one row each at a time), and neither may drop the other's rows. The write is atomic (temp file, rename)."""
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged[key] = results[key]
    results.update({k: v for k, v in merged.items() if k not in results})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(path)


_NOT_IN_BASELINE = ("model", "weights", "kv", "compute", "attention", "full_heads", "window_tokens", "sink_tokens", "topk_tokens",
                    "topk_channels")


def baseline_key(spec: str) -> tuple:
    """What a row is compared against: the same reranker, depth, windows and prompt order on the float32 model
    with dense attention and a float32 cache (the options that compress or sparsify are dropped)."""
    kind, _, rest = spec.partition(":")
    opts = dict(o.split("=", 1) for o in rest.split(",") if o)
    if opts.get("order") == "retriever-last":
        del opts["order"]  # the default
    return kind, tuple(sorted((k, v) for k, v in opts.items() if k not in _NOT_IN_BASELINE))


def _is_baseline(r: dict) -> bool:
    return (r.get("weights") == "fp32" and r.get("kv") == "fp32" and r.get("compute", "fp32") == "fp32"
            and r.get("attention", "dense") == "dense")


def table(results: dict, model: str) -> str:
    lines = ["| reranker | weights | kv | order | attention (work x dense) | nDCG@10 | vs float32 (p) | linear bytes (x fp32) "
             "| KV B/token (x bf16) | s/query |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {k: r for k, r in results.items() if r["model"] == model}
    bases = {baseline_key(r["spec"]): r for r in rows.values() if "error" not in r and _is_baseline(r)}
    for key, r in rows.items():
        d = r.get("depth", 20)
        label = f"{r['reranker']}@{d}"
        opts = dict(o.split("=", 1) for o in r["spec"].partition(":")[2].split(",") if o)
        if "window" in opts:
            label += f" windows {opts['window']}/{opts.get('stride', opts['window'])}"
        if r.get("queries", 43) < 43:  # compared with float32 on these same queries
            label += f" ({r['queries']} q)"
        compute = r.get("compute", "fp32")
        weights = r["weights"] + (f", {compute} compute" if compute != "fp32" else "")
        kv = compute if r["kv"] == "fp32" else r["kv"]  # an uncompressed cache holds the compute dtype
        if "error" in r:
            lines.append(f"| {label} | {weights} | {kv} | {r['order']} | | n/a: {r['error'][:90]} | | | | |")
            continue
        base = bases.get(baseline_key(r["spec"]))
        vs = "-"
        if base is not None and base is not r:
            t = compare_per_query(base["per_query"], r["per_query"])
            vs = f"{t.delta:+.4f} (p={t.p_randomization:.3f})"
        att = r.get("attention", "dense")
        if r.get("dense_blocks"):
            att += f" ({r['attention_blocks'] / r['dense_blocks']:.3f})"
        extra = ",".join(f"{k}={v}" for k, v in opts.items()
                         if k in ("full_heads", "window_tokens", "topk_tokens", "topk_channels"))
        if extra:
            att += f" [{extra}]"
        lines.append(f"| {label} | {weights} | {kv} | {r['order']} | {att} | {r['nDCG@10']:.4f} | {vs} | "
                     f"{r['linear_bytes'] / 2**20:.1f} MiB ({r['linear_ratio']:.3f}) | {r['kv_bytes_per_token']:.0f} "
                     f"({r['kv_ratio_bf16']:.3f}) | {r['seconds_per_q']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
