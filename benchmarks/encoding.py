"""Dense encoding backends side by side: sentence-transformers in PyTorch float32 (the baseline), ONNX Runtime
float32 (fused graph), ONNX Runtime with int8 linear layers, OpenVINO float32 and OpenVINO bf16 (AMX/AVX512-BF16
CPUs), on BEIR SciFact and NFCorpus with the offline all-MiniLM-L6-v2, plus the embedding cache.

Per dataset and backend, in one run: documents/s encoding the whole corpus (title + text, batch 64, 256 tokens; the
same length-sorted batching for every backend), queries/s, nDCG@10 of exact inner-product search over those
vectors on the test queries, the change against PyTorch float32 with a paired randomization test, and the cosine
between each document's vector and PyTorch's (min and mean). Then a second encode of the corpus through the
embedding cache (``cache=true``): every text is a hit.

Which layers ``onnx-int8`` quantizes by default was chosen here on NFCorpus's dev queries (SciFact has no other
split), never on the test queries reported: the widest scope (all > ffn > intermediate) whose dev nDCG@10 is within
0.002 of PyTorch float32's. The script prints that choice; the test rows show every scope.

    python benchmarks/encoding.py [--datasets scifact nfcorpus] [--backends torch onnx onnx-int8 openvino openvino-bf16]
        [--scopes all ffn intermediate] [--no-cache] [--out DIR]

(``torch`` always runs first: it is every other row's baseline.)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.eval.significance import compare_per_query
from rankstack.records import Run
from rankstack.retrieval.encoders import SentenceTransformerEncoder
from rankstack.retrieval.onnx_encoder import BACKENDS, resolve_backend

from _table import markdown, save_results  # noqa: E402

logger = logging.getLogger("benchmarks.encoding")
ORDER = ("all", "ffn", "intermediate")  # widest first


def search(q: np.ndarray, d: np.ndarray, docids: list[str], qids: list[str], k: int = 100) -> Run:
    scores = q @ d.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return Run(scores={qid: {docids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)},
               name="dense")


def encode_timed(enc, docs, queries):
    t0 = time.perf_counter()
    dv = enc.encode_documents(docs)
    t1 = time.perf_counter()
    qv = enc.encode_queries(queries)
    t2 = time.perf_counter()
    return dv, qv, len(docs) / (t1 - t0), len(queries) / (t2 - t1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir")
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--scopes", nargs="+", default=list(ORDER), choices=ORDER, help="onnx-int8's layer scopes")
    ap.add_argument("--no-cache", action="store_true", help="skip the embedding cache rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="runs/encoding")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    backends = [("torch", None)]
    for b in args.backends:
        if b == "onnx-int8":
            backends += [(b, s) for s in args.scopes]
        elif b != "torch":
            backends.append((b, None))
    rows, choice = [], {}
    auto = resolve_backend("auto")  # what the default dense:backend=auto runs on this machine
    logger.info("backend=auto on this machine: %s", auto)
    with tempfile.TemporaryDirectory() as cache_root:
        for name in args.datasets:
            splits = ["test"] + (["dev"] if name == "nfcorpus" else [])
            data = {s: load_beir(f"{args.data}/{name}", split=s) for s in splits}
            corpus = data["test"].corpus
            docids = list(corpus)
            docs = [corpus[d] for d in docids]
            base_vecs, base_eval = None, {}
            for backend, scope in backends:
                label = backend if scope is None else f"{backend}:{scope}"
                if label == auto:
                    label += " (= auto here)"
                enc = SentenceTransformerEncoder(backend=backend, int8_scope=scope, show_progress=True)
                enc.encode_documents(docs[:64])  # warm-up (first call allocates; ONNX export is cached before)
                results = {}
                for split in splits:
                    ds = data[split]
                    qids = list(ds.queries)
                    texts = [ds.queries[q].text for q in qids]
                    if split == "test":
                        dv, qv, dps, qps = encode_timed(enc, docs, texts)
                    else:
                        qv = enc.encode_queries(texts)
                    res = evaluate(search(qv, dv, docids, qids), ds.qrels, ["nDCG@10"])
                    results[split] = res
                if base_vecs is None:
                    base_vecs, base_eval, base_dps = dv, results, dps
                cos = (dv * base_vecs).sum(1)
                row = {"dataset": name, "backend": label, "docs_per_s": round(dps, 1),
                       "vs_torch": round(dps / base_dps, 2), "queries_per_s": round(qps, 1),
                       "ndcg@10": round(results["test"].aggregate["nDCG@10"], 4)}
                t = compare_per_query(base_eval["test"].per_query["nDCG@10"], results["test"].per_query["nDCG@10"])
                row.update(delta=round(t.delta, 4), p=round(t.p_randomization, 3),
                           cos_min=round(float(cos.min()), 5), cos_mean=round(float(cos.mean()), 5))
                if "dev" in results:
                    row["dev_ndcg@10"] = round(results["dev"].aggregate["nDCG@10"], 4)
                    row["dev_delta"] = round(results["dev"].aggregate["nDCG@10"]
                                             - base_eval["dev"].aggregate["nDCG@10"], 4)
                rows.append(row)
                logger.info("%s", row)
            if not args.no_cache:
                # the embedding cache: first pass fills it, the second is all hits
                enc = SentenceTransformerEncoder(backend="torch", cache=cache_root, show_progress=False)
                t0 = time.perf_counter()
                enc.encode_documents(docs)
                t1 = time.perf_counter()
                again = enc.encode_documents(docs)
                t2 = time.perf_counter()
                cos = (again * base_vecs).sum(1)
                rows.append({"dataset": name, "backend": "torch + cache (all hits)",
                             "docs_per_s": round(len(docs) / (t2 - t1), 1),
                             "vs_torch": round(len(docs) / (t2 - t1) / base_dps, 2),
                             "cos_min": round(float(cos.min()), 5), "cos_mean": round(float(cos.mean()), 5),
                             "cache_fill_docs_per_s": round(len(docs) / (t1 - t0), 1)})
            if name == "nfcorpus":
                ok = [r for r in rows if r["dataset"] == name and r["backend"].startswith("onnx-int8:")
                      and r["dev_delta"] >= -0.002]
                ok.sort(key=lambda r: ORDER.index(r["backend"].split(":")[1]))
                choice = {"chosen_int8_scope": ok[0]["backend"].split(":")[1] if ok else None,
                          "rule": "widest scope with NFCorpus dev nDCG@10 within 0.002 of torch float32"}
                logger.info("scope chosen on NFCorpus dev: %s", choice)
    cols = ["dataset", "backend", "docs_per_s", "vs_torch", "queries_per_s", "ndcg@10", "delta", "p", "cos_min",
            "cos_mean", "dev_ndcg@10", "dev_delta"]
    table = markdown(rows, cols)
    sys.stdout.write(table + "\n" + str(choice) + "\n")
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    save_results(args.out, {"rows": rows, "choice": choice, "threads": args.threads, "machine": platform.node(),
                            "cpu_bf16": sorted(flags & {"amx_bf16", "avx512_bf16"}), "auto": auto})
    return 0


if __name__ == "__main__":
    sys.exit(main())
