"""LLM rerankers on TREC DL19 (BM25 top-100 from ../shared/data/trec-dl/dl19) beside BM25, on one CPU run.

For each reranker and depth: nDCG@10, its paired randomization-test p-value against BM25, and per query the
forward passes, prompt and generated tokens and seconds; beside it, the reranked order fused with the input order by
RRF (no extra passes), with its own p-value. ICR runs keep their attention signals, from which the
script also scores every layer alone and the uncalibrated/plainly calibrated variants (no extra passes).

    python benchmarks/llm_rerank_dl19.py --runs icr:20 first:20 listwise:20 --queries 43 [--model smollm2]
    python benchmarks/llm_rerank_dl19.py --runs icr:100 listwise:100 --queries 5 --passage-tokens 64
    python benchmarks/llm_rerank_dl19.py --beir scifact --runs icr:20 --queries 50

A run is ``name:depth`` with name in icr, icr-query (attention from the query's tokens only), icr-nocal, first,
listwise, setwise, setwise-think, icr-heads (heads chosen from --heads-from runs), icr-window and icr-heads-window
(windows of 20 candidates, stride 10). Results (JSON with per-query numbers) go to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from rankstack.eval.datasets import load_trec_dl
from rankstack.eval.metrics import evaluate
from rankstack.eval.significance import compare_per_query
from rankstack.records import Candidate, Qrels, Ranking, Run
from rankstack.pipeline.fusion import rrf
from rankstack.pipeline import Given, Pipeline, Rerank
from rankstack.rerank.base import Reranker
from rankstack.rerank.llm import (CausalLM, FirstReranker, ICRReranker, ListwiseReranker, SetwiseReranker)

from _table import markdown, save_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

logger = logging.getLogger("benchmarks.llm_rerank_dl19")
ROOT = Path(__file__).resolve().parents[1]


def heads_from(paths: list[Path], top: int) -> list[tuple[int, int]]:
    """The ``top`` (layer, head) pairs with the best mean calibrated nDCG@10 in earlier ICR runs' results (other
    datasets: choosing heads on the evaluation queries themselves would be tuning on the test set)."""
    tables = []
    for p in paths:
        rows = json.loads((p / "results.json").read_text())["rows"]
        tables += [torch.tensor(r["analysis"]["per_head_calibrated"]) for r in rows if r.get("analysis")]
    if not tables:
        raise SystemExit(f"no ICR head analysis in {paths}")
    mean = torch.stack(tables).mean(0)
    best = torch.argsort(mean.flatten(), descending=True)[:top]
    return [(int(i // mean.shape[1]), int(i % mean.shape[1])) for i in best]


def make(name: str, llm: CausalLM, passage_tokens: int, heads=None):
    kw = {"passage_tokens": passage_tokens}
    return {
        "icr-heads": lambda: ICRReranker(llm, heads=heads, **kw),
        "icr": lambda: ICRReranker(llm, keep_signals=True, **kw),
        "icr-query": lambda: ICRReranker(llm, query_span="query", keep_signals=True, **kw),
        "icr-nocal": lambda: ICRReranker(llm, calibration="none", **kw),
        # sliding windows of 20 (stride 10, bottom-up as listwise): short prompts where the signal holds up
        "icr-window": lambda: ICRReranker(llm, window=20, stride=10, **kw),
        "icr-heads-window": lambda: ICRReranker(llm, heads=heads, window=20, stride=10, **kw),
        "first": lambda: FirstReranker(llm, **kw),
        "listwise": lambda: ListwiseReranker(llm, **kw),
        "setwise": lambda: SetwiseReranker(llm, k=10, **kw),
        "setwise-think": lambda: SetwiseReranker(llm, k=10, reasoning=True, **kw),
    }[name]()


def ndcg(rankings: list[Ranking], qrels: Qrels) -> tuple[float, dict[str, float]]:
    res = evaluate(Run.from_rankings(rankings), qrels, ["nDCG@10"], drop_self=False)
    return res.aggregate["nDCG@10"], dict(res.per_query["nDCG@10"])


class _ByScores(Reranker):
    """Orders the candidates it is given by fixed scores (ties: input order); with the rerank stage it gives the
    ICR signal variants the same head/tail treatment as the real rerankers."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def rerank_batch(self, rankings):
        out = []
        for r in rankings:
            order = sorted(range(len(r.candidates)), key=lambda i: (-self.scores[r.candidates[i].docid], i))
            n = len(order)
            out.append(Ranking(query=r.query, candidates=tuple(
                Candidate(docid=r.candidates[i].docid, score=float(n - j)) for j, i in enumerate(order))))
        return out


def reorder(r: Ranking, scores: dict[str, float], depth: int) -> Ranking:
    """``r`` with its top ``depth`` ordered by ``scores``, through the rerank stage."""
    return Pipeline(Given([r]), [Rerank(_ByScores(scores), depth)]).run([r.query], len(r.candidates)).rankings[0]


def icr_signal_variants(icr: ICRReranker, rankings: list[Ranking], qrels: Qrels, depth: int) -> dict:
    """nDCG@10 of: uncalibrated ICR, plain N/A subtraction, and each layer alone (calibrated and not). Only for
    single-window runs, where one window's signals cover a query's whole list."""
    if len(icr.signals) != len(rankings):
        return {}
    layers = icr.signals[0].query.shape[0]
    out: dict = {"per_layer_calibrated": [], "per_layer_uncalibrated": []}

    def score(fn) -> float:
        rs = [reorder(r, dict(zip(sig.docids, fn(sig).tolist())), depth) for r, sig in zip(rankings, icr.signals)]
        return ndcg(rs, qrels)[0]

    out["uncalibrated"] = score(lambda s: s.query.sum(dim=(0, 1)))
    out["plain_calibrated"] = score(lambda s: (s.query - s.calibration).sum(dim=(0, 1)))
    for layer in range(layers):
        out["per_layer_calibrated"].append(score(lambda s, L=layer: (s.query[L] - s.calibration[L]).sum(0)))
        out["per_layer_uncalibrated"].append(score(lambda s, L=layer: s.query[L].sum(0)))
    heads = icr.signals[0].query.shape[1]
    per_head = torch.zeros(layers, heads)
    for layer in range(layers):
        for h in range(heads):
            per_head[layer, h] = score(lambda s, L=layer, H=h: s.query[L, H] - s.calibration[L, H])
    best = torch.argmax(per_head)
    out["best_single_head_calibrated"] = {"layer": int(best // heads), "head": int(best % heads),
                                          "nDCG@10": float(per_head.flatten()[best])}
    out["per_head_calibrated"] = per_head.tolist()
    return out


def load_inputs(args) -> tuple[list[Ranking], Qrels, str]:
    if args.beir:
        from rankstack.eval.datasets import load_beir
        from rankstack.pipeline import DatasetWorkspace, compile_pipeline

        ds = load_beir(args.data / "beir" / args.beir)
        ws = DatasetWorkspace(ds, ROOT / ".rankstack-cache/indexes")
        queries = list(ds.queries.values())[: args.queries]
        rankings = compile_pipeline("bm25", ws).run(queries, 100, with_documents=True).rankings
        qrels = ds.qrels
        name = args.beir
    else:
        dl = load_trec_dl(args.data / "trec-dl" / "dl19")
        judged = set(dl.qrels.judgments)
        rankings = [r for r in dl.candidates if r.query.qid in judged][: args.queries]
        qrels = dl.qrels
        name = "dl19"
    keep = {r.query.qid for r in rankings}
    return rankings, Qrels(judgments={q: dict(j) for q, j in qrels.judgments.items() if q in keep}), name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--beir", default=None, help="a BEIR dataset (its BM25 top-100) instead of DL19")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", nargs="+", default=["icr:20", "first:20", "listwise:20"])
    p.add_argument("--queries", type=int, default=43)
    p.add_argument("--passage-tokens", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--heads-from", type=Path, nargs="*", default=[],
                   help="--out folders of ICR runs on other datasets; icr-heads uses their best heads")
    p.add_argument("--top-heads", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rankings, qrels, dname = load_inputs(args)
    base, base_pq = ndcg(rankings, qrels)
    llm = CausalLM(args.model)
    rows = [{"dataset": dname, "reranker": "BM25", "depth": "-", "queries": len(rankings), "nDCG@10": base}]
    details = []
    for spec in args.runs:
        name, _, depth = spec.partition(":")
        depth = int(depth or 20)
        heads = heads_from(args.heads_from, args.top_heads) if name.startswith("icr-heads") else None
        rr = make(name, llm, args.passage_tokens, heads)
        stage = Rerank(rr, depth)
        out, stats = [], []
        t0 = time.perf_counter()
        for i, r in enumerate(rankings):
            out += Pipeline(Given([r]), [stage]).run([r.query], len(r.candidates) or 1).rankings
            if not r.candidates:  # nothing retrieved (e.g. an NFCorpus query of stopwords): scores 0 either way
                continue
            stats += rr.last_stats
            logger.info("%s@%d query %d/%d: %s", name, depth, i + 1, len(rankings), stats[-1].as_dict())
        wall = time.perf_counter() - t0
        value, pq = ndcg(out, qrels)
        test = compare_per_query(base_pq, pq)
        # the reranked top `depth` fused with the input order (RRF, k=60): no extra passes; reported beside, not
        # instead of, the reranker's own number
        fused = rrf([Run.from_rankings([r.top(depth) for r in out]), Run.from_rankings([r.top(depth) for r in rankings])],
                    rrf_k=60, depth=depth)
        f_res = evaluate(fused, qrels, ["nDCG@10"], drop_self=False)
        f_test = compare_per_query(base_pq, dict(f_res.per_query["nDCG@10"]))
        n = len(stats)
        row = {"dataset": dname, "reranker": name, "model": args.model, "depth": depth, "queries": n, "heads": heads,
               "nDCG@10": value, "delta": test.delta, "p_randomization": test.p_randomization,
               "nDCG@10_rrf_input": f_res.aggregate["nDCG@10"], "p_rrf_input": f_test.p_randomization,
               "forward_passes_per_q": sum(s.forward_passes for s in stats) / n,
               "prompt_tokens_per_q": sum(s.prompt_tokens for s in stats) / n,
               "generated_tokens_per_q": sum(s.generated_tokens for s in stats) / n,
               "seconds_per_q": wall / n, "repairs": sum(s.repairs for s in stats),
               "truncated_passages": sum(s.truncated_passages for s in stats)}
        if isinstance(rr, ICRReranker) and rr.keep_signals:
            # signals exist only for queries that had candidates (an NFCorpus query can retrieve nothing)
            row["analysis"] = icr_signal_variants(rr, [r for r in rankings if r.candidates], qrels, depth)
        rows.append(row)
        details.append({"run": spec, "per_query_nDCG@10": pq, "stats": [s.as_dict() for s in stats]})
        logger.info("%s", {k: v for k, v in row.items() if k != "analysis"})
    cols = ["dataset", "reranker", "depth", "queries", "nDCG@10", "delta", "p_randomization", "nDCG@10_rrf_input",
            "p_rrf_input", "forward_passes_per_q",
            "prompt_tokens_per_q", "generated_tokens_per_q", "seconds_per_q", "repairs"]
    print(f"\nmodel {args.model}; machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    print(markdown(rows, cols, small=10.0))
    for r in rows:
        a = r.get("analysis")
        if a:
            print(f"\nICR@{r['depth']} signal analysis: uncalibrated {a['uncalibrated']:.4f}, plain N/A calibration "
                  f"{a['plain_calibrated']:.4f}, masked (the run) {r['nDCG@10']:.4f}; best single head "
                  f"{a['best_single_head_calibrated']}")
            print("per layer, calibrated:   " + " ".join(f"{v:.3f}" for v in a["per_layer_calibrated"]))
            print("per layer, uncalibrated: " + " ".join(f"{v:.3f}" for v in a["per_layer_uncalibrated"]))
    save_results(args.out, {"rows": rows, "details": details})
    return 0


if __name__ == "__main__":
    sys.exit(main())
