"""Building a sharded collection, with Ray Data or in this process.

One Ray Data pipeline: the corpus (in collection order, each document tagged with its position and shard) is
encoded by a pool of encoder actors (``map_batches`` with a class: each actor loads the models once; every kind that
encodes documents encodes them there, packed as bytes per document), grouped by shard, and each group is written by
one task into the shard's folder (documents, and each kind's shard index: BM25 postings analysed by Lucene's
analyser, vector indexes, sparse impacts, token vectors...). The driver then gathers the collection statistics each
kind needs from the shards and writes the manifest. Everything is written under a temporary folder and renamed into place,
so an interrupted build leaves the previous collection as it was.

The folder must be reachable by every worker under the same path (one machine, or a shared volume on a cluster).
"""

from __future__ import annotations

import io
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
from rankstack.records import Document
from rankstack.retrieval import kinds
from rankstack.retrieval.kinds import RetrievalKind
from rankstack.retrieval.sharded import ShardEntry, ShardSet, shard_name, shard_ranges, write_manifest, write_shard

logger = logging.getLogger(__name__)

__all__ = ["build_sharded", "shard_entries"]


def _encodes(kind: RetrievalKind) -> bool:
    """Whether the kind encodes documents (a model runs), as opposed to analysing them where it writes them."""
    return type(kind).encode is not RetrievalKind.encode


def shard_entries(indexes: Sequence[str], model: str | None = None) -> list[ShardEntry]:
    """The indexes a sharded collection holds, from retriever specs (``bm25``, ``dense:index=(pq:m=8)``, ``splade``,
    ``maxsim``, a registered kind...); ``model``: the encoder of dense specs that name none."""
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    out, seen = [], {}
    defaults = {"model": model or DEFAULT_DENSE_MODEL}
    for text in indexes:
        kind, settings = kinds.resolve(text, defaults)
        if not kind.shardable:
            raise BadInput(f"retrieval kind {kind.name!r} cannot be sharded")
        if settings.index_key in seen:
            raise BadInput(f"--kind {seen[settings.index_key]!r} and {text!r} are the same index; give it once")
        seen[settings.index_key] = text
        out.append(ShardEntry(spec=str(kinds.canonical(text)), folder=kind.folder(settings, defaults),
                              defaults=defaults))
    if not out:
        raise BadInput("a sharded collection needs at least one index (--kind bm25, --kind dense, ...)")
    return out


def _pack_one(kind: RetrievalKind, payload) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **kind.pack([payload]))
    return buf.getvalue()


def _unpack_all(kind: RetrievalKind, cells: Sequence[bytes]):
    payloads = []
    for cell in cells:
        with np.load(io.BytesIO(cell)) as z:
            payloads += kind.split(kind.unpack({k: z[k] for k in z.files}))
    return kind.unpack(kind.pack(payloads))


class _Encode:
    """A Ray Data actor: loads the encoders once, then encodes batches of documents, one packed cell per document
    and index (so any kind's encoded documents travel as bytes)."""

    def __init__(self, entries: Sequence[ShardEntry]):
        from rankstack.models import ModelCache

        models = ModelCache()
        self.parts = []
        for e in entries:
            kind, settings = e.resolve()
            if _encodes(kind):
                encoder = kind.encoder(settings, models)
                if hasattr(encoder, "show_progress"):
                    encoder.show_progress = False
                self.parts.append((e.folder, kind, settings, encoder))

    def __call__(self, batch: dict) -> dict:
        docs = [Document(docid=str(d), title=str(t), text=str(x))
                for d, t, x in zip(batch["docid"], batch["title"], batch["text"])]
        for folder, kind, settings, encoder in self.parts:
            encoded = kind.split(kind.encode(settings, encoder, docs))
            batch[f"enc:{folder}"] = np.array([_pack_one(kind, p) for p in encoded], dtype=object)
        return batch


def _write_group(batch: dict, *, folder: str, entries: Sequence[ShardEntry], metas: dict) -> dict:
    """One shard's rows (any order) -> its folder; returns the summary as a one-row batch."""
    order = np.argsort(np.asarray(batch["position"]), kind="stable")
    shard = int(batch["shard"][0])
    docs = [Document(docid=str(batch["docid"][i]), title=str(batch["title"][i]), text=str(batch["text"][i]),
                     metadata=json.loads(str(batch["metadata"][i]))) for i in order]
    parts = []
    for e in entries:
        kind, _ = e.resolve()
        col = f"enc:{e.folder}"
        encoded = _unpack_all(kind, [batch[col][i] for i in order]) if col in batch else None
        parts.append((e, encoded, metas[e.folder]))
    summary = write_shard(Path(folder) / shard_name(shard), docs, parts)
    summary["first_position"] = int(batch["position"][order[0]])
    return {"shard": np.array([shard]), "summary": np.array([json.dumps(summary)])}


def build_sharded(documents: Sequence[Document], output: str | os.PathLike, *, shards: int,
                  indexes: Sequence[str] = ("bm25", "dense"), model: str | None = None,
                  address: str | None = "local", workers: int = 2, batch_size: int = 64,
                  corpus_sha1: str | None = None) -> ShardSet:
    """Build ``output`` as ``shards`` shards of ``documents``. ``indexes``: retriever specs of the indexes every
    shard holds (any retrieval kind: ``bm25``, ``dense:index=(pq:m=8)``, ``splade``, ``maxsim``...); ``model``: the
    encoder of dense specs that name none (a sentence-transformers name or folder, or ``hash:<dim>``).

    ``address``: a Ray cluster (``local`` starts one here) on which ``workers`` encoder actors encode and each shard
    is written by one task; None builds in this process, shard after shard (no Ray needed)."""
    from rankstack.models import ModelCache
    from rankstack.pipeline.workspace import corpus_fingerprint

    if isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise BadInput(f"workers must be a positive integer, got {workers!r}")
    entries = shard_entries(indexes, model)
    documents = checked_corpus(documents, "a sharded collection")
    ranges = shard_ranges(len(documents), shards)
    metas = {}
    probe = ModelCache()
    for e in entries:  # what an index needs besides encoded documents (a sparse index's vocabulary)
        kind, settings = e.resolve()
        header = kind.header(settings, kind.encoder(settings, probe)) if type(kind).header is not \
            RetrievalKind.header else {}
        metas[e.folder] = {**header, "index_key": settings.index_key}
    del probe
    t0 = time.perf_counter()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(output) as tmp:
        if address is None:
            by_shard, pids = _build_here(documents, ranges, entries, metas, tmp)
        else:
            by_shard, pids = _build_on_ray(documents, ranges, entries, metas, tmp, address, workers, batch_size)
        seconds = time.perf_counter() - t0
        write_manifest(tmp, [d.docid for d in documents], ranges, [by_shard[i] for i in range(len(ranges))],
                       entries=entries, corpus_sha1=corpus_sha1 or corpus_fingerprint({d.docid: d for d in documents}),
                       build={"workers": workers if address is not None else 1, "seconds": round(seconds, 3),
                              "docs_per_s": round(len(documents) / seconds, 2), "batch_size": batch_size,
                              "address": address, "worker_pids": pids})
    logger.info("built %d shards of %d documents (%s) in %.1f s", len(ranges), len(documents),
                " + ".join(e.spec for e in entries), seconds)
    return ShardSet.load(output)


def _build_here(documents, ranges, entries, metas, tmp: Path):
    from rankstack.models import ModelCache

    models = ModelCache()
    by_shard = {}
    for i, (start, end) in enumerate(ranges):
        docs = documents[start:end]
        parts = []
        for e in entries:
            kind, settings = e.resolve()
            encoded = kind.encode(settings, kind.encoder(settings, models), docs) if _encodes(kind) else None
            parts.append((e, encoded, metas[e.folder]))
        by_shard[i] = write_shard(tmp / shard_name(i), docs, parts)
    return by_shard, [os.getpid()]


def _build_on_ray(documents, ranges, entries, metas, tmp: Path, address: str, workers: int, batch_size: int):
    from rankstack.distributed.cluster import connect

    connect(address, num_cpus=workers)
    import ray.data

    owner = np.repeat(np.arange(len(ranges)), [e - s for s, e in ranges])
    rows = [{"position": i, "shard": int(owner[i]), "docid": d.docid, "title": d.title, "text": d.text,
             "metadata": json.dumps(dict(d.metadata))} for i, d in enumerate(documents)]
    ds = ray.data.from_items(rows, override_num_blocks=max(4 * workers, len(ranges)))
    if any(_encodes(e.resolve()[0]) for e in entries):
        ds = ds.map_batches(_Encode, fn_constructor_kwargs={"entries": entries}, batch_size=batch_size,
                            batch_format="numpy", concurrency=workers, num_cpus=1)
    written = ds.groupby("shard").map_groups(
        _write_group, batch_format="numpy", num_cpus=1,
        fn_kwargs={"folder": str(tmp), "entries": entries, "metas": metas}).take_all()
    by_shard = {int(r["shard"]): json.loads(str(r["summary"])) for r in written}
    missing = [i for i in range(len(ranges)) if i not in by_shard]
    if missing:
        raise BadInput(f"shards {missing} were not written; see the Ray logs")
    return by_shard, sorted({s["pid"] for s in by_shard.values()})
