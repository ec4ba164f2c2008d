"""Compressed LLM rerankers on TREC DL19 (issue 11): one row per (reranker, weights, kv) against the float32 model.

Every row builds its reranker from a spec string (``icr:depth=20,weights=int8,kv=int4``), exactly as pipelines,
``rankstack rerank`` and the service do, and reranks the BM25 top-100's top ``depth`` of the 43 judged queries.
Columns: nDCG@10, its change against the same reranker on the float32 model (paired randomization test), the
decoder's linear-weight bytes (and their ratio to float32), KV bytes per token of the cache format (ratio to a bf16
cache), and prefill (forward-pass) seconds per query. ICR's prompt order is the authors' (``retriever-last``)
unless a row says otherwise.

    python benchmarks/llm_compression.py --queries 43 --rows icr:fp32 icr:int8 first:fp32 first:int8 ...
    (a row is reranker[@depth]:weights[:kv[:order[:attention]]], e.g. icr:int4-g32-outliers:int4 or
    icr@100:fp32:fp32::passage-block; or spec=<a reranker spec>, e.g.
    "spec=icr:depth=20,attention=duo,full_heads=18.7;18.8,window_tokens=128")
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
from rankstack.rerank.factory import ModelCache, build_reranker

logger = logging.getLogger("benchmarks.llm_compression")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--queries", type=int, default=43)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "llm_compression.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    dl = load_trec_dl(args.data / "trec-dl" / "dl19")
    judged = set(dl.qrels.judgments)
    rankings = [r for r in dl.candidates if r.query.qid in judged][: args.queries]
    keep = {r.query.qid for r in rankings}
    qrels = Qrels(judgments={q: dict(j) for q, j in dl.qrels.judgments.items() if q in keep})
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for row in args.rows:
        if row.startswith("spec="):  # a whole reranker spec, for options the short form lacks (full_heads...)
            from rankstack.rerank.factory import RerankerSpec

            rs = RerankerSpec.parse(row[5:])
            o = dict(rs.options)
            kind, depth = rs.kind, rs.depth or args.depth
            weights, kv, order, attention = (o.get("weights", "fp32"), o.get("kv", "fp32"), o.get("order", ""),
                                             o.get("attention", ""))
            spec = f"{row[5:]},model={args.model}" + ("" if rs.depth else f",depth={depth}")
        else:
            parts = row.split(":")
            kind, weights, kv, order, attention = (parts + ["fp32", "fp32", "", ""][len(parts) - 1:])[:5]
            kind, _, d = kind.partition("@")
            depth = int(d or args.depth)
            spec = f"{kind}:model={args.model},depth={depth},weights={weights},kv={kv}"
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
                                              "kv": kv, "order": order or "retriever-last", "depth": depth,
                                              "attention": attention or "dense", "error": str(exc)}
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
        results[f"{args.model}|{row}"] = {
            "spec": spec, "model": args.model, "reranker": kind, "weights": weights, "kv": kv,
            "order": order or "retriever-last", "depth": depth, "attention": attention or "dense",
            "attention_blocks": sum(s.attention_blocks for s in stats), "dense_blocks": sum(s.dense_blocks for s in stats),
            "prompt_tokens_per_q": sum(s.prompt_tokens for s in stats) / len(stats),
            "queries": len(rankings), "nDCG@10": res.aggregate["nDCG@10"],
            "per_query": dict(res.per_query["nDCG@10"]), "linear_bytes": llm.weight_stats["linear_bytes"],
            "linear_ratio": llm.weight_stats["ratio"], "kv_bytes_per_token": llm.kv_bytes_per_token(),
            "kv_ratio_bf16": llm.kv_bytes_per_token() / llm.kv_bytes_per_token("bf16"),
            "seconds_per_q": wall / len(rankings), "load_seconds": load_s}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        logger.info("%s: nDCG@10 %.4f, %.1f s/q", spec, res.aggregate["nDCG@10"], wall / len(rankings))
    print(table(results, args.model))
    return 0


def table(results: dict, model: str) -> str:
    lines = ["| reranker | weights | kv | order | attention (work x dense) | nDCG@10 | vs float32 (p) | linear bytes (x fp32) "
             "| KV B/token (x bf16) | s/query |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        if r["model"] != model:
            continue
        if "error" in r:
            lines.append(f"| {r['reranker']}@{r.get('depth', 20)} | {r['weights']} | {r['kv']} | {r['order']} | | n/a: "
                         f"{r['error'][:90]} | | | | |")
            continue
        d = r.get("depth", 20)
        kd = r["reranker"] + (f"@{d}" if d != 20 else "")
        base = results.get(f"{model}|{kd}:fp32") or results.get(f"{model}|{kd}:fp32:fp32")
        vs = "-"
        if base is not None and base is not r:
            t = compare_per_query(base["per_query"], r["per_query"])
            vs = f"{t.delta:+.4f} (p={t.p_randomization:.3f})"
        att = r.get("attention", "dense")
        if r.get("dense_blocks"):
            att += f" ({r['attention_blocks'] / r['dense_blocks']:.3f})"
        if key.split("|", 1)[1].startswith("spec="):
            extra = ",".join(p for p in r["spec"].split(":", 1)[1].split(",")
                             if p.split("=")[0] in ("full_heads", "window_tokens", "topk_tokens", "topk_channels"))
            att += f" [{extra}]"  # the comparison with the float32 row was made above, as for every row
        lines.append(f"| {r['reranker']}@{d} | {r['weights']} | {r['kv']} | {r['order']} | {att} | {r['nDCG@10']:.4f} | {vs} | "
                     f"{r['linear_bytes'] / 2**20:.1f} MiB ({r['linear_ratio']:.3f}) | {r['kv_bytes_per_token']:.0f} "
                     f"({r['kv_ratio_bf16']:.3f}) | {r['seconds_per_q']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
