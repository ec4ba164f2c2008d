"""Building a sharded collection with Ray Data.

One Ray Data pipeline: the corpus (in collection order, each document tagged with its position and shard) is
encoded by a pool of encoder actors (``map_batches`` with a class: each actor loads the model once), grouped by
shard, and each group is written by one task into the shard's folder (documents, BM25 postings analysed by
Lucene's analyser, the vector index). The driver then gathers the shards' term statistics into the collection's
BM25 statistics and writes the manifest. Everything is written under a temporary folder and renamed into place,
so an interrupted build leaves the previous collection as it was.

The folder must be reachable by every worker under the same path (one machine, or a shared volume on a cluster).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack._atomic import atomic_dir
from rankstack.errors import BadInput
from rankstack.index.base import checked_corpus
from rankstack.index.sharded import SHARD_INDEXES, ShardedIndex, shard_name, shard_ranges, write_manifest, write_shard
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["build_sharded"]


class _Encode:
    """A Ray Data actor: loads the encoders once (dense and/or learned-sparse), then encodes batches of documents.
    Sparse rows travel as bytes (vocabulary ids and weights), one cell per document."""

    def __init__(self, dense: tuple[str, dict] | None, sparse: tuple[str, dict] | None):
        from rankstack.retrieval.encoders import make_encoder

        self.dense = self.sparse = None
        if dense is not None:
            model, options = dense
            self.dense = make_encoder(model, **({} if model.startswith("hash") else
                                                {**options, "show_progress": False}))
        if sparse is not None:
            from rankstack.retrieval.sparse_encoders import SparseTextEncoder

            model, options = sparse
            self.sparse = SparseTextEncoder(model, **options, show_progress=False)

    def __call__(self, batch: dict) -> dict:
        docs = [Document(docid=str(d), title=str(t), text=str(x))
                for d, t, x in zip(batch["docid"], batch["title"], batch["text"])]
        if self.dense is not None:
            batch["vector"] = self.dense.encode_documents(docs)
        if self.sparse is not None:
            weights, tokens = self.sparse.encode_documents(docs, with_tokens=True)
            w, t = weights.tocsr(), tokens.tocsr()
            rows = range(len(docs))
            batch["sp_ids"] = np.array([w.indices[w.indptr[i]:w.indptr[i + 1]].astype(np.int32).tobytes()
                                        for i in rows], dtype=object)
            batch["sp_w"] = np.array([w.data[w.indptr[i]:w.indptr[i + 1]].astype(np.float32).tobytes()
                                      for i in rows], dtype=object)
            batch["sp_tok"] = np.array([t.indices[t.indptr[i]:t.indptr[i + 1]].astype(np.int32).tobytes()
                                        for i in rows], dtype=object)
        return batch


def _sparse_rows(batch: dict, order: np.ndarray, dim: int):
    """The (weights, tokens) CSR matrices of a group's rows, in ``order``."""
    import scipy.sparse as sp

    def csr(ids_col, val_col):
        ids = [np.frombuffer(batch[ids_col][i], np.int32) for i in order]
        vals = ([np.frombuffer(batch[val_col][i], np.float32) for i in order] if val_col
                else [np.ones(x.size, np.float32) for x in ids])
        indptr = np.concatenate([[0], np.cumsum([x.size for x in ids])])
        return sp.csr_matrix((np.concatenate(vals) if vals else [], np.concatenate(ids) if ids else [], indptr),
                             shape=(len(order), dim))

    return csr("sp_ids", "sp_w"), csr("sp_tok", None)


def _write_group(batch: dict, *, folder: str, indexes: Sequence[str], dense_spec: str, dense_meta: dict,
                 sparse_meta: dict | None = None) -> dict:
    """One shard's rows (any order) -> its folder; returns the summary as a one-row batch."""
    order = np.argsort(np.asarray(batch["position"]), kind="stable")
    shard = int(batch["shard"][0])
    docs = [Document(docid=str(batch["docid"][i]), title=str(batch["title"][i]), text=str(batch["text"][i]),
                     metadata=json.loads(str(batch["metadata"][i]))) for i in order]
    vectors = np.asarray(batch["vector"])[order] if "vector" in batch else None
    sparse = _sparse_rows(batch, order, len(sparse_meta["vocab"])) if "sp_ids" in batch else None
    summary = write_shard(Path(folder) / shard_name(shard), docs, indexes=indexes, vectors=vectors,
                          dense_spec=dense_spec, dense_meta=dense_meta, sparse=sparse,
                          sparse_meta=dict(sparse_meta or {}))
    summary["first_position"] = int(batch["position"][order[0]])
    return {"shard": np.array([shard]), "summary": np.array([json.dumps(summary)])}


def build_sharded(documents: Sequence[Document], output: str | os.PathLike, *, shards: int,
                  indexes: Sequence[str] = ("bm25", "dense"), model: str | None = None,
                  encoder_options: dict | None = None, dense_spec: str = "flat", sparse_model: str | None = None,
                  sparse_options: dict | None = None, address: str | None = "local", workers: int = 2,
                  batch_size: int = 64, corpus_sha1: str | None = None) -> ShardedIndex:
    """Build ``output`` as ``shards`` shards of ``documents`` on the Ray cluster at ``address``, encoding with
    ``workers`` encoder actors. ``indexes``: any of ``bm25``, ``dense`` (``model``: the dense encoder, a
    sentence-transformers name or folder, or ``hash:<dim>``; ``dense_spec``: the index kind each shard holds) and
    ``splade`` (``sparse_model``: the learned-sparse encoder; ``sparse_options``: its ``max_seq_length``,
    ``batch_size``)."""
    from rankstack.distributed.cluster import connect
    from rankstack.pipeline.workspace import corpus_fingerprint
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    indexes = tuple(dict.fromkeys(indexes))
    bad = [i for i in indexes if i not in SHARD_INDEXES]
    if bad or not indexes:
        raise BadInput(f"a sharded collection holds {', '.join(SHARD_INDEXES)} indexes (any of them); "
                       f"got {list(indexes)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise BadInput(f"workers must be a positive integer, got {workers!r}")
    documents = checked_corpus(documents, "a sharded collection")
    ranges = shard_ranges(len(documents), shards)
    model = model or DEFAULT_DENSE_MODEL
    options = dict(encoder_options or {})
    connect(address, num_cpus=workers)
    import ray.data

    t0 = time.perf_counter()
    owner = np.repeat(np.arange(len(ranges)), [e - s for s, e in ranges])
    rows = [{"position": i, "shard": int(owner[i]), "docid": d.docid, "title": d.title, "text": d.text,
             "metadata": json.dumps(dict(d.metadata))} for i, d in enumerate(documents)]
    ds = ray.data.from_items(rows, override_num_blocks=max(4 * workers, len(ranges)))
    dense_meta: dict = {}
    sparse_meta: dict | None = None
    splade = None
    if "splade" in indexes:
        from rankstack.index.sparse import DEFAULT_SCALE
        from rankstack.retrieval.sparse_encoders import DEFAULT_SPARSE_MODEL, SparseTextEncoder

        sparse_model = sparse_model or DEFAULT_SPARSE_MODEL
        sparse_options = {"max_seq_length": 256, **dict(sparse_options or {})}
        probe = SparseTextEncoder(sparse_model, **sparse_options)  # the vocabulary, and a bad name fails here
        sparse_meta = {"vocab": probe.vocab, "fingerprint": probe.fingerprint, "scale": DEFAULT_SCALE,
                       "model": sparse_model, "max_seq_length": sparse_options["max_seq_length"]}
        splade = {"model": sparse_model, "max_seq_length": sparse_options["max_seq_length"], "scale": DEFAULT_SCALE,
                  "vocab_fingerprint": probe.fingerprint, "vocab_size": len(probe.vocab)}
        del probe
    if "dense" in indexes or "splade" in indexes:
        ds = ds.map_batches(_Encode, fn_constructor_kwargs={
            "dense": (model, options) if "dense" in indexes else None,
            "sparse": (sparse_model, sparse_options) if "splade" in indexes else None},
            batch_size=batch_size, batch_format="numpy", concurrency=workers, num_cpus=1)
    if "dense" in indexes:
        dense_meta = {"model": model, "normalized": bool(options.get("normalize", True)), **options}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(output) as tmp:
        written = ds.groupby("shard").map_groups(
            _write_group, batch_format="numpy", num_cpus=1,
            fn_kwargs={"folder": str(tmp), "indexes": indexes, "dense_spec": dense_spec, "dense_meta": dense_meta,
                       "sparse_meta": sparse_meta},
        ).take_all()
        by_shard = {int(r["shard"]): json.loads(str(r["summary"])) for r in written}
        missing = [i for i in range(len(ranges)) if i not in by_shard]
        if missing:
            raise BadInput(f"shards {missing} were not written; see the Ray logs")
        seconds = time.perf_counter() - t0
        dense = None
        if "dense" in indexes:
            from rankstack.index.registry import load_vector_index

            first = load_vector_index(tmp / shard_name(0) / "dense")
            dense = {"model": model, "dim": first.dim, "spec": dense_spec, "options": options}
        write_manifest(tmp, [d.docid for d in documents], ranges, [by_shard[i] for i in range(len(ranges))],
                       indexes=indexes, dense=dense, splade=splade,
                       corpus_sha1=corpus_sha1 or corpus_fingerprint({d.docid: d for d in documents}),
                       build={"workers": workers, "seconds": round(seconds, 3),
                              "docs_per_s": round(len(documents) / seconds, 2), "batch_size": batch_size,
                              "address": address, "worker_pids": sorted({s["pid"] for s in by_shard.values()})})
    logger.info("built %d shards of %d documents (%s) in %.1f s with %d workers", len(ranges), len(documents),
                "+".join(indexes), seconds, workers)
    return ShardedIndex.load(output)
