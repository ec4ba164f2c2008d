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
from rankstack.index.sharded import SHARD_INDEXES, ShardedIndex, shard_name, shard_ranges, write_manifest, write_shard
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["build_sharded"]


class _Encode:
    """A Ray Data actor: loads the dense encoder once, then encodes batches of documents."""

    def __init__(self, model: str, options: dict):
        from rankstack.retrieval.encoders import make_encoder

        self.encoder = make_encoder(model, **({} if model.startswith("hash") else {**options, "show_progress": False}))

    def __call__(self, batch: dict) -> dict:
        docs = [Document(docid=str(d), title=str(t), text=str(x))
                for d, t, x in zip(batch["docid"], batch["title"], batch["text"])]
        batch["vector"] = self.encoder.encode_documents(docs)
        return batch


def _write_group(batch: dict, *, folder: str, indexes: Sequence[str], dense_spec: str, dense_meta: dict) -> dict:
    """One shard's rows (any order) -> its folder; returns the summary as a one-row batch."""
    order = np.argsort(np.asarray(batch["position"]), kind="stable")
    shard = int(batch["shard"][0])
    docs = [Document(docid=str(batch["docid"][i]), title=str(batch["title"][i]), text=str(batch["text"][i]),
                     metadata=json.loads(str(batch["metadata"][i]))) for i in order]
    vectors = np.asarray(batch["vector"])[order] if "vector" in batch else None
    summary = write_shard(Path(folder) / shard_name(shard), docs, indexes=indexes, vectors=vectors,
                          dense_spec=dense_spec, dense_meta=dense_meta)
    summary["first_position"] = int(batch["position"][order[0]])
    return {"shard": np.array([shard]), "summary": np.array([json.dumps(summary)])}


def build_sharded(documents: Sequence[Document], output: str | os.PathLike, *, shards: int,
                  indexes: Sequence[str] = ("bm25", "dense"), model: str | None = None,
                  encoder_options: dict | None = None, dense_spec: str = "flat", address: str | None = "local",
                  workers: int = 2, batch_size: int = 64, corpus_sha1: str | None = None) -> ShardedIndex:
    """Build ``output`` as ``shards`` shards of ``documents`` on the Ray cluster at ``address``, encoding with
    ``workers`` encoder actors. ``indexes``: any of ``bm25`` and ``dense`` (``model``: the dense encoder, a
    sentence-transformers name or folder, or ``hash:<dim>``; ``dense_spec``: the index kind each shard holds)."""
    from rankstack.distributed.cluster import connect
    from rankstack.pipeline.workspace import corpus_fingerprint
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    indexes = tuple(dict.fromkeys(indexes))
    bad = [i for i in indexes if i not in SHARD_INDEXES]
    if bad or not indexes:
        raise BadInput(f"a sharded collection holds {' and/or '.join(SHARD_INDEXES)} indexes; got {list(indexes)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise BadInput(f"workers must be a positive integer, got {workers!r}")
    documents = list(documents)
    if not documents:
        raise BadInput("cannot build a sharded collection from an empty corpus")
    seen: set[str] = set()
    for d in documents:
        if d.docid in seen:
            raise BadInput(f"docid {d.docid!r} appears twice in the corpus; docids must be unique")
        seen.add(d.docid)
    ranges = shard_ranges(len(documents), shards)
    model = model or DEFAULT_DENSE_MODEL
    options = dict(encoder_options or {})
    ray = connect(address, num_cpus=workers)
    import ray.data

    t0 = time.perf_counter()
    owner = np.repeat(np.arange(len(ranges)), [e - s for s, e in ranges])
    rows = [{"position": i, "shard": int(owner[i]), "docid": d.docid, "title": d.title, "text": d.text,
             "metadata": json.dumps(dict(d.metadata))} for i, d in enumerate(documents)]
    ds = ray.data.from_items(rows, override_num_blocks=max(4 * workers, len(ranges)))
    dense_meta: dict = {}
    if "dense" in indexes:
        ds = ds.map_batches(_Encode, fn_constructor_kwargs={"model": model, "options": options},
                            batch_size=batch_size, batch_format="numpy", concurrency=workers, num_cpus=1)
        dense_meta = {"model": model, "normalized": bool(options.get("normalize", True)), **options}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(output) as tmp:
        written = ds.groupby("shard").map_groups(
            _write_group, batch_format="numpy", num_cpus=1,
            fn_kwargs={"folder": str(tmp), "indexes": indexes, "dense_spec": dense_spec, "dense_meta": dense_meta},
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
                       indexes=indexes, dense=dense,
                       corpus_sha1=corpus_sha1 or corpus_fingerprint({d.docid: d for d in documents}),
                       build={"workers": workers, "seconds": round(seconds, 3),
                              "docs_per_s": round(len(documents) / seconds, 2), "batch_size": batch_size,
                              "address": address, "worker_pids": sorted({s["pid"] for s in by_shard.values()})})
    logger.info("built %d shards of %d documents (%s) in %.1f s with %d workers", len(ranges), len(documents),
                "+".join(indexes), seconds, workers)
    return ShardedIndex.load(output)
