"""End-to-end evaluation of named pipelines on a BEIR dataset, with cached indexes.

Used by ``rankstack eval`` and the benchmarks. Indexes live under ``<index_root>/<dataset>/<kind>`` and are
rebuilt only when the corpus or the model changes (a fingerprint in the index's ``params.json``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound
from rankstack.eval.datasets import BeirDataset, load_beir
from rankstack.eval.metrics import DEFAULT_METRICS, EvalResult, evaluate
from rankstack.records import Query, Run

logger = logging.getLogger(__name__)

__all__ = ["PIPELINES", "Workspace", "PipelineResult", "run_pipelines", "tune_alpha", "corpus_fingerprint"]

PIPELINES = ("bm25", "dense", "hybrid-rrf", "hybrid-interp")
ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))


def corpus_fingerprint(corpus: Mapping[str, object]) -> str:
    h = hashlib.sha1()
    for docid, doc in corpus.items():
        h.update(docid.encode())
        h.update(b"\0")
        h.update(doc.contents.encode())
        h.update(b"\1")
    return h.hexdigest()


@dataclass
class Workspace:
    """Builds or reopens the indexes of one dataset under ``root``."""

    dataset: BeirDataset
    root: Path
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    k1: float = 0.9
    b: float = 0.4
    threads: int | None = None
    batch_size: int = 64
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root) / self.dataset.name
        self.fingerprint = corpus_fingerprint(self.dataset.corpus)

    def bm25(self):
        if "bm25" in self._cache:
            return self._cache["bm25"]
        from rankstack.index.lucene import LuceneIndex
        from rankstack.retrieval.bm25 import BM25Retriever

        path = self.root / "bm25"
        try:
            index = LuceneIndex(path)
            if index.params.get("corpus_sha1") != self.fingerprint:
                raise IndexCorrupt("corpus changed")
            logger.info("reusing BM25 index %s", path)
        except (IndexNotFound, IndexCorrupt):
            t0 = time.perf_counter()
            index = LuceneIndex.build(self.dataset.corpus.values(), path, meta={"corpus_sha1": self.fingerprint})
            secs = time.perf_counter() - t0
            self.stats.setdefault("bm25", {}).update(index_seconds=secs, index_docs_per_s=len(index) / secs)
        self._cache["bm25"] = BM25Retriever(index, k1=self.k1, b=self.b, threads=self.threads)
        return self._cache["bm25"]

    def encoder(self):
        if "encoder" not in self._cache:
            from rankstack.retrieval.encoders import SentenceTransformerEncoder

            self._cache["encoder"] = SentenceTransformerEncoder(self.model, batch_size=self.batch_size)
        return self._cache["encoder"]

    def dense(self):
        if "dense" in self._cache:
            return self._cache["dense"]
        from rankstack.index.faiss_flat import DenseFlatIndex
        from rankstack.retrieval.dense import DenseRetriever, build_dense_index

        enc = self.encoder()
        path = self.root / ("dense-" + self.model.replace("/", "__"))
        try:
            index = DenseFlatIndex.load(path)
            if index.meta.get("corpus_sha1") != self.fingerprint or index.meta.get("model") != self.model:
                raise IndexCorrupt("corpus or model changed")
            logger.info("reusing dense index %s", path)
        except (IndexNotFound, IndexCorrupt):
            docs = list(self.dataset.corpus.values())
            t0 = time.perf_counter()
            index = build_dense_index(enc, docs)
            secs = time.perf_counter() - t0
            index.meta["corpus_sha1"] = self.fingerprint
            index.save(path)
            self.stats.setdefault("dense", {}).update(index_seconds=secs, encode_docs_per_s=len(docs) / secs)
        self._cache["dense"] = DenseRetriever(enc, index)
        return self._cache["dense"]


@dataclass(frozen=True, kw_only=True)
class PipelineResult:
    name: str
    run: Run
    result: EvalResult
    stats: Mapping[str, float]


def _timed_retrieve(retriever, queries: Sequence[Query], k: int) -> tuple[Run, float]:
    t0 = time.perf_counter()
    rankings = retriever.retrieve(list(queries), k)
    return Run.from_rankings(rankings, name=retriever.name), time.perf_counter() - t0


def tune_alpha(first: Run, second: Run, qrels, *, metric: str = "nDCG@10",
               grid: Sequence[float] = ALPHA_GRID, depth: int = 1000) -> tuple[float, float]:
    """The interpolation weight (of ``first``) that maximises ``metric`` on ``qrels``; returns (alpha, value)."""
    from rankstack.retrieval.fusion import interpolate

    best = (grid[0], -1.0)
    for a in grid:
        v = evaluate(interpolate(first, second, alpha=a, depth=depth), qrels, [metric]).aggregate[metric]
        if v > best[1] + 1e-12:
            best = (a, v)
    return best


def _cv_interpolation(bm25: Run, dense: Run, ds: BeirDataset, folds: int = 2, seed: int = 0) -> tuple[Run, list[float]]:
    """k-fold cross-validated interpolation over the test queries: alpha tuned on the other folds."""
    from rankstack.records import Qrels
    from rankstack.retrieval.fusion import interpolate

    qids = sorted(ds.qrels.qids)
    rng = np.random.default_rng(seed)
    rng.shuffle(qids)
    parts = [qids[i::folds] for i in range(folds)]
    fused: dict[str, dict[str, float]] = {}
    alphas = []
    for i, part in enumerate(parts):
        train = {q for j, p in enumerate(parts) if j != i for q in p}
        tq = Qrels(judgments={q: v for q, v in ds.qrels.judgments.items() if q in train})
        alpha, _ = tune_alpha(dense, bm25, tq)
        alphas.append(alpha)
        sub = interpolate(dense, bm25, alpha=alpha)
        fused.update({q: dict(sub.scores[q]) for q in part if q in sub.scores})
    return Run(scores=fused, name="hybrid-interp"), alphas


def run_pipelines(dataset: str | BeirDataset, pipelines: Sequence[str], *, split: str = "test",
                  index_root: str | Path = ".rankstack-cache/indexes", k: int = 1000,
                  metrics: Sequence[str] = DEFAULT_METRICS, tune_split: str | None = "auto",
                  model: str = "sentence-transformers/all-MiniLM-L6-v2", k1: float = 0.9, b: float = 0.4,
                  threads: int | None = None) -> tuple[BeirDataset, dict[str, PipelineResult], Workspace]:
    """Run and evaluate each named pipeline. ``hybrid-interp`` tunes its weight on ``tune_split`` (``auto``: the
    dataset's dev split if it has one, else 2-fold cross-validation over the evaluated queries)."""
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise BadInput(f"unknown pipeline(s) {unknown}; choose from {', '.join(PIPELINES)}")
    if isinstance(k, bool) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    ds = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    ws = Workspace(dataset=ds, root=Path(index_root), model=model, k1=k1, b=b, threads=threads)
    queries = list(ds.queries.values())
    base_runs: dict[str, tuple[Run, float]] = {}

    def base(name: str) -> tuple[Run, float]:
        if name not in base_runs:
            retriever = ws.bm25() if name == "bm25" else ws.dense()
            base_runs[name] = _timed_retrieve(retriever, queries, max(k, 1000))
        return base_runs[name]

    out: dict[str, PipelineResult] = {}
    for p in pipelines:
        stats: dict[str, float] = {}
        if p in ("bm25", "dense"):
            run, secs = base(p)
            run = run.top(k)
            stats.update(ws.stats.get(p, {}))
        else:
            (bm, s1), (de, s2) = base("bm25"), base("dense")
            t0 = time.perf_counter()
            if p == "hybrid-rrf":
                from rankstack.retrieval.fusion import rrf

                run = rrf([bm, de], k=60).top(k)
            else:
                run, stats = _interp(ds, ws, bm, de, split, tune_split, k)
            secs = s1 + s2 + time.perf_counter() - t0 - stats.get("tune_seconds", 0.0)
        stats.update(queries=len(queries), search_seconds=secs, qps=len(queries) / secs if secs else float("inf"))
        run = Run(scores=run.scores, name=p)
        out[p] = PipelineResult(name=p, run=run, result=evaluate(run, ds.qrels, metrics), stats=stats)
    return ds, out, ws


def _interp(ds: BeirDataset, ws: Workspace, bm: Run, de: Run, split: str, tune_split: str | None,
            k: int) -> tuple[Run, dict]:
    from rankstack.retrieval.fusion import interpolate

    t0 = time.perf_counter()
    folder = ds.path
    if tune_split == "auto":
        tune_split = "dev" if folder is not None and (folder / "qrels" / "dev.tsv").is_file() and split != "dev" else None
    if tune_split:
        tune_ds = load_beir(folder, tune_split)
        tq = list(tune_ds.queries.values())
        tb = Run.from_rankings(ws.bm25().retrieve(tq, 1000))
        td = Run.from_rankings(ws.dense().retrieve(tq, 1000))
        alpha, val = tune_alpha(td, tb, tune_ds.qrels)
        logger.info("interpolation weight of dense tuned on %s: alpha=%.2f (nDCG@10 %.4f)", tune_split, alpha, val)
        tune_s = time.perf_counter() - t0
        return interpolate(de, bm, alpha=alpha).top(k), {"alpha_dense": alpha, "tuned_on": tune_split,
                                                          "tune_seconds": tune_s}
    run, alphas = _cv_interpolation(bm, de, ds)
    logger.info("interpolation weight of dense by 2-fold cross-validation: %s", alphas)
    return run.top(k), {"alpha_dense": float(np.mean(alphas)), "tuned_on": "2-fold CV",
                        "tune_seconds": time.perf_counter() - t0}
