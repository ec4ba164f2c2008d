"""Compressed dense indexes against the exact float index and against FAISS, on SciFact, NFCorpus and 1M synthetic.

For every index type: bytes per document held in memory (codes + ids + quantizer tables, not the on-disk rescoring
file), build time, queries per second (batched, and one at a time), Recall@100 against the exact float index,
nDCG@10 (BEIR datasets), and the ratio of our batched QPS to FAISS's equivalent index timed in the same run.
The 1M x 384 part uses clustered synthetic vectors (no relevance labels: no nDCG) and also measures resident memory
(RssAnon) of a fresh process that loads each saved index and searches it.

    python benchmarks/compressed_indexes.py [--datasets scifact nfcorpus] [--synthetic 1000000] [--out DIR]

Embeddings are all-MiniLM-L6-v2 from the cached eval index (.rankstack-cache; built on first use, ~3 min each).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.index.base import IndexSpec, VectorIndex
from rankstack.index.compressed import no_polysemous
from rankstack.index.registry import build_vector_index, load_vector_index
from rankstack.pipeline import DatasetWorkspace
from rankstack.pipeline.resources import DenseSettings
from rankstack.records import Run

from _table import markdown, save_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

logger = logging.getLogger("benchmarks.compressed_indexes")

ROOT = Path(__file__).resolve().parents[1]

BEIR_SPECS = [
    "flat", "sq8", "hnsw:hnsw_m=32,ef_search=128", "ivf-flat:nlist=64,nprobe=8",
    "pq:m=48", "pq:m=48,rescore=float32,multiplier=4",
    "opq-pq:m=48", "opq-pq:m=48,rescore=float32,multiplier=4",
    "ivf-pq:nlist=64,m=48,nprobe=16", "ivf-pq:nlist=64,m=48,nprobe=16,rescore=float32,multiplier=4",
    "binary", "binary:rescore=float32,multiplier=10", "binary:rescore=int8,multiplier=10",
    "binary:bits=2,mode=symmetric", "binary:bits=2,mode=asymmetric",
    "binary:bits=2,mode=asymmetric,rescore=float32,multiplier=4", "binary:bits=4,mode=asymmetric",
]
SYNTH_SPECS = [
    "flat", "binary", "binary:rescore=float32,multiplier=10", "binary:bits=2,mode=asymmetric",
    "pq:m=48,train_size=50000", "pq:m=48,train_size=50000,rescore=float32,multiplier=4",
    "ivf-pq:nlist=1024,m=48,nprobe=32,train_size=50000",
]


def faiss_equivalent(spec: IndexSpec, dim: int):
    """FAISS's own index for the same operation, or None where RankStack's path has no direct FAISS twin."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "binary" and spec.binary_search == "hamming":
        return faiss.IndexBinaryFlat(dim)
    table = {"flat": "Flat", "sq8": "SQ8", "hnsw": f"HNSW{spec.hnsw_m},Flat", "ivf-flat": f"IVF{spec.nlist},Flat",
             "pq": f"PQ{spec.m}x{spec.nbits}", "opq-pq": f"OPQ{spec.m},PQ{spec.m}x{spec.nbits}",
             "ivf-pq": f"IVF{spec.nlist},PQ{spec.m}x{spec.nbits}"}
    return faiss.index_factory(dim, table[spec.kind], ip) if spec.kind in table else None


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def time_faiss(spec: IndexSpec, x: np.ndarray, q: np.ndarray, index_ref: VectorIndex, k: int) -> float | None:
    """Batched QPS of FAISS's equivalent index, trained on the same sample (not counted) and searched with the
    same parameters; rescoring specs are compared with FAISS's plain index (FAISS has no two-tier rescoring)."""
    import faiss

    if spec.rescore != "none":
        return None
    idx = faiss_equivalent(spec, x.shape[1])
    if idx is None:
        return None
    if isinstance(idx, faiss.IndexBinaryFlat):
        codec = index_ref.binary_parts()[0]
        idx.add(np.ascontiguousarray(codec.encode(x)[0][:, 0]))
        qq = np.ascontiguousarray(codec.encode(q)[0][:, 0])
    else:
        sample = x
        if x.shape[0] > spec.train_size:
            sample = x[np.sort(np.random.default_rng(spec.seed).choice(x.shape[0], spec.train_size, replace=False))]
        no_polysemous(idx)  # same training as ours; only search speed is compared
        idx.train(sample)
        idx.add(x)
        if spec.kind.startswith("ivf"):
            faiss.extract_index_ivf(idx).nprobe = spec.nprobe
        if spec.kind == "hnsw":
            idx.hnsw.efSearch = spec.ef_search
        qq = q
    idx.search(qq[:2], k)  # warm
    _, secs = _time(lambda: idx.search(qq, k))
    return len(q) / secs


def bench_index(text: str, x, docids, q, exact_top, k=100, single=50, qrels=None, qids=None, save_dir=None):
    spec = IndexSpec.parse(text)
    index, build_s = _time(lambda: build_vector_index(spec, docids, x))
    # Always search a saved-and-loaded index: that is how it is served (compact docid table, rescoring tier
    # read from its memmapped file), and it makes bytes_per_doc comparable across rows.
    path = Path(save_dir or tempfile.mkdtemp(prefix="rs-bench-")) / spec.label.replace(",", "_")
    index.save(path)
    index = load_vector_index(path)
    index.search(q[:2], k)
    top, secs = _time(lambda: index.search(q, k))
    _, s1 = _time(lambda: [index.search(q[i:i + 1], k) for i in range(min(single, len(q)))])
    rows = [{int(s) for s in r if s >= 0} for r in top.ids]
    recall = float(np.mean([len(a & b) / len(b) for a, b in zip(rows, exact_top)]))
    row = {"index": spec.label, "code_bytes": index.code_bytes(), "bytes_per_doc": index.memory_bytes() / len(index),
           "build_s": build_s, "qps_batched": len(q) / secs, "qps_single": min(single, len(q)) / s1,
           "R@100_vs_exact": recall}
    if qrels is not None:
        pairs = index.docid_pairs(index.search(q, 1000 if len(index) >= 1000 else len(index)))
        run = Run(scores={qid: dict(p) for qid, p in zip(qids, pairs)}, name=spec.label)
        row["nDCG@10"] = evaluate(run, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    faiss_qps = time_faiss(spec, x, q, index, k)
    row["faiss_qps"] = faiss_qps
    row["ratio_vs_faiss"] = row["qps_batched"] / faiss_qps if faiss_qps else None
    logger.info("%s: %s", text, row)
    return row, index


def beir_embeddings(data: Path, name: str):
    ds = load_beir(data / name)
    ws = DatasetWorkspace(ds, ROOT / ".rankstack-cache/indexes")
    settings = DenseSettings.of("dense")
    flat = ws.flat_index(settings)
    x = flat.vectors()
    cache = ROOT / ".rankstack-cache" / f"queries-{name}-{ws.fingerprint[:12]}.npy"
    qs = list(ds.queries.values())
    if cache.exists():
        q = np.load(cache)
    else:
        q = settings.encoder(ws.models).encode_queries([qq.text for qq in qs])
        np.save(cache, q)
    return ds, flat.docids, x.astype(np.float32), np.asarray(q, np.float32), [qq.qid for qq in qs]


def bench_beir(data: Path, name: str, specs) -> list[dict]:
    ds, docids, x, q, qids = beir_embeddings(data, name)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :100]
    exact_top = [set(r.tolist()) for r in exact]
    out = []
    for text in specs:
        row, _ = bench_index(text, x, docids, q, exact_top, qrels=ds.qrels, qids=qids)
        out.append({"dataset": name, "docs": len(docids), **row})
    base = next(r["nDCG@10"] for r in out if r["index"] == "Flat")
    for r in out:
        r["nDCG_kept"] = r["nDCG@10"] / base
        r["compression"] = (x.shape[1] * 4) / r["bytes_per_doc"]
    return out


def synthetic(n: int, dim: int = 384, seed: int = 0, clusters: int = 2000):
    """Clustered unit vectors (embedding-like); queries are perturbed corpus vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = centres[rng.integers(0, clusters, e - s)] + 0.8 * rng.standard_normal((e - s, dim), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n, 200, replace=False)] + 0.3 * rng.standard_normal((200, dim)).astype(np.float32) / np.sqrt(dim) * 8
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q.astype(np.float32)


RSS_PROBE = r"""
import sys, numpy as np
from rankstack.index.registry import load_vector_index
def rss():
    f = dict(l.split(':', 1) for l in open('/proc/self/status'))
    return int(f['RssAnon'].split()[0]) * 1024, int(f['RssFile'].split()[0]) * 1024
q = np.load(sys.argv[2])
a0, f0 = rss()
ix = load_vector_index(sys.argv[1])
ix.search(q, 100)
a1, f1 = rss()
print(a1 - a0, f1 - f0)
"""


def resident_bytes(path: Path, qfile: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path), str(qfile)], capture_output=True, text=True,
                         check=True)
    anon, file_ = out.stdout.split()
    return int(anon), int(file_)


def bench_synthetic(n: int, specs) -> list[dict]:
    x, q = synthetic(n)
    docids = [str(i) for i in range(n)]
    exact = np.argsort(-(q @ x.T), axis=1)[:, :100]
    exact_top = [set(r.tolist()) for r in exact]
    out = []
    with tempfile.TemporaryDirectory(prefix="rs-bench-1m-") as tmp:
        qfile = Path(tmp) / "q.npy"
        np.save(qfile, q)
        for text in specs:
            row, index = bench_index(text, x, docids, q, exact_top, save_dir=tmp)
            path = Path(tmp) / index.spec.label.replace(",", "_")
            if not path.exists():
                index.save(path)
            anon, file_ = resident_bytes(path, qfile)
            row.update(rss_anon_per_doc=anon / n, rss_file_mb=file_ / 2**20)
            out.append({"dataset": f"synthetic-{n // 1000}k", "docs": n, **row})
            del index
    return out


def hamming_micro(n: int, nbytes: int = 32, nq: int = 100, k: int = 100) -> dict:
    """1M x 256-bit codes: RankStack's CPU Hamming path vs FAISS IndexBinaryFlat vs the torch reference."""
    import faiss
    import torch

    from rankstack.kernels import hamming_topk_ref

    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    q = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
    idx = faiss.IndexBinaryFlat(nbytes * 8)
    idx.add(codes)
    idx.search(q[:2], k)
    (fd, fi), t_faiss = _time(lambda: idx.search(q, k))
    (od, oi), t_ours = _time(lambda: faiss.knn_hamming(q, codes, k))
    (rd, ri), t_ref = _time(lambda: hamming_topk_ref(torch.from_numpy(q[:10]), torch.from_numpy(codes), k))
    assert np.array_equal(fd, od) and np.array_equal(rd.numpy(), fd[:10])
    return {"n": n, "bits": nbytes * 8, "queries": nq, "faiss_IndexBinaryFlat_qps": nq / t_faiss,
            "rankstack_cpu_qps": nq / t_ours, "ratio": t_faiss / t_ours, "torch_reference_qps": 10 / t_ref}



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/beir")
    p.add_argument("--datasets", nargs="*", default=["scifact", "nfcorpus"])
    p.add_argument("--synthetic", type=int, default=1_000_000, help="rows of the synthetic set (0 to skip)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows, micro = [], None
    for name in args.datasets:
        rows += bench_beir(args.data, name, BEIR_SPECS)
    if args.synthetic:
        micro = hamming_micro(args.synthetic)
        rows += bench_synthetic(args.synthetic, SYNTH_SPECS)
    cols = ["dataset", "index", "code_bytes", "bytes_per_doc", "compression", "build_s", "qps_batched", "qps_single",
            "R@100_vs_exact", "nDCG@10", "nDCG_kept", "faiss_qps", "ratio_vs_faiss", "rss_anon_per_doc",
            "rss_file_mb"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(markdown(rows, cols))
    if micro:
        print("\nHamming top-100, 1M x 256-bit codes, 100 queries:", json.dumps(micro))
    save_results(args.out, {"rows": rows, "hamming": micro})
    return 0


if __name__ == "__main__":
    sys.exit(main())
