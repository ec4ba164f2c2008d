"""What stale centroids cost PLAID (issue 14): a collection's PLAID index takes writes in place, compressing new
documents with the centroids and residual buckets it was derived with, and is derived afresh (k-means) only once
its live tokens have doubled since (:meth:`PlaidIndex.outgrown`). So at worst half of the live tokens were never
seen by the centroids that encode them. This measures that worst case on real text, against a fresh derivation:

- ``fresh``: k-means over the whole corpus's tokens (what a rebuild gives);
- ``stale-half``: centroids and buckets trained on a random half of the documents, the other half written
  afterwards with them (the doubling rule's limit when new documents look like the old ones);
- ``stale-other``: trained on another collection's corpus (``--other``, e.g. NFCorpus for SciFact), then this whole
  corpus written with them: a collection whose content changed entirely, beyond what the doubling rule lets
  happen (there, the new documents would have triggered a fresh derivation once they outnumbered the old).

``PlaidIndex.build(tokens, codebook=stale)`` compresses the tokens exactly as :meth:`PlaidIndex.update` writes them
(tests/index/test_multivector.py checks the two equal). Each row: PLAID search (``nprobe=4, candidates=1000``, the
service's path) nDCG@10 with a paired randomization p against ``fresh``, Recall@100 against exact MaxSim over the
uncompressed tokens, and ms per query. The token encoder is the offline stand-in (MiniLM's normalised token
vectors), as in ``benchmarks/multivector.py``: it measures the compression's loss, not ColBERT's quality.

    python benchmarks/plaid_staleness.py --data ../shared/data/beir --datasets scifact nfcorpus --out runs/plaid_staleness
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from _table import markdown, save_results
from multivector import recall_vs
from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.eval.significance import compare_per_query
from rankstack.index.multivector import PlaidIndex
from rankstack.kernels.topk_heap import rows_topk
from rankstack.pipeline import DatasetWorkspace
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
from rankstack.records import Run
from rankstack.retrieval.kinds.multivector import MultiVectorSettings

logger = logging.getLogger("benchmarks.plaid_staleness")


def per_query_ndcg(rows, scores, docids, queries, qrels) -> dict[str, float]:
    run = Run(scores={q.qid: {docids[int(r)]: float(s) for r, s in zip(rr[:100], ss[:100]) if r >= 0}
                      for q, rr, ss in zip(queries, rows, scores)})
    return dict(evaluate(run, qrels, ["nDCG@10"]).per_query["nDCG@10"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/beir")
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--other", nargs="+", default=["nfcorpus", "scifact"],
                    help="per dataset, the collection whose centroids make the stale-other row")
    ap.add_argument("--index-root", default=DEFAULT_INDEX_ROOT)
    ap.add_argument("--nbits", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/plaid_staleness")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = MultiVectorSettings.of("maxsim")
    rows: list[dict] = []
    for name, other in zip(args.datasets, args.other):
        ds = load_beir(Path(args.data) / name)
        ws = DatasetWorkspace(ds, args.index_root)
        tokens = ws.token_index(s)
        queries = list(ds.queries.values())
        qtok = s.encoder(ws.models).encode_queries([q.text for q in queries])
        exact_s, exact_r = rows_topk(tokens.score_all(qtok), 100)
        exact = per_query_ndcg(exact_r, exact_s, tokens.docids, queries, ds.qrels)

        rng = np.random.default_rng(args.seed)
        half = rng.permutation(len(tokens))[: len(tokens) // 2]
        drop = sorted(set(tokens.docids) - {tokens.docids[i] for i in half})
        books = {"fresh": None,
                 "stale-half": PlaidIndex.build(tokens.replaced(drop, [], None), nbits=args.nbits, seed=args.seed)}
        other_tokens = None
        if other:
            ods = load_beir(Path(args.data) / other)
            other_tokens = DatasetWorkspace(ods, args.index_root).token_index(s)
            books["stale-other"] = PlaidIndex.build(other_tokens, nbits=args.nbits, seed=args.seed)
        fresh_pq = None
        for label, book in books.items():
            t0 = time.perf_counter()
            p = PlaidIndex.build(tokens, nbits=args.nbits, seed=args.seed) if book is None else \
                PlaidIndex.build(tokens, codebook=book)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            sc, rr, _ = p.search(qtok, 100, nprobe=4, candidates=args.candidates)
            ms = (time.perf_counter() - t0) / len(queries) * 1e3
            assert p.docids == tokens.docids
            pq = per_query_ndcg(rr, sc, p.docids, queries, ds.qrels)
            row = {"dataset": name, "centroids": label if book is None else f"{label} ({len(book.centroids)}, "
                   f"trained on {int(book.meta['trained_tokens']):,} tokens)",
                   "trained / live tokens": 1.0 if book is None else book.meta["trained_tokens"] / tokens.n_tokens,
                   "nDCG@10": float(np.mean(list(pq.values()))), "exact MaxSim nDCG@10": float(np.mean(list(exact.values()))),
                   "R@100 vs exact": recall_vs(rr, exact_r), "ms/query": ms, "build s": build_s}
            if fresh_pq is None:
                fresh_pq = pq
            else:
                t = compare_per_query(fresh_pq, pq)
                row["vs fresh"] = t.delta
                row["p"] = t.p_randomization
            logger.info("%s", row)
            rows.append(row)
        save_results(args.out, {"rows": rows})
    print(markdown(rows, list(dict.fromkeys(c for r in rows for c in r))))


if __name__ == "__main__":
    main()
