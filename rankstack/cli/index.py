"""``rankstack index``: build a persistent index of any retrieval kind, or a sharded collection."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankstack.cli._common import ray_args
from rankstack.errors import BadInput


def _index_items(args: argparse.Namespace) -> list:
    """``--kind`` values as retriever items: a retriever spec (``bm25``, ``splade``, ``dense:index=(pq:m=48)``,
    ``maxsim``, any registered kind), or an index spec alone (a dense index of that kind); ``--model`` fills the model
    of a kind that takes one and names none."""
    from rankstack.index.base import INDEX_KINDS
    from rankstack.retrieval import kinds
    from rankstack.spec import Item, parse_item

    out = []
    for text in args.kind or ["bm25"]:
        item = parse_item(text.strip(), "index kind")
        if item.kind in INDEX_KINDS and not kinds.known(item.kind):  # an index spec alone: a dense index of it
            item = Item("dense", (("index", item),))
        try:
            item = kinds.canonical(item)
        except BadInput as exc:
            raise BadInput(f"--kind {text!r}: {exc}; or give an index spec such as {', '.join(INDEX_KINDS)}") from None
        if args.model and "model" in kinds.get(item.kind).options and item.get("model") is None:
            item = item.updated(model=args.model)
        out.append(item)
    return out


def run(args: argparse.Namespace) -> int:
    """Build one persistent index from a dataset's corpus, of any retrieval kind: ``bm25`` (Lucene, with its score
    matrix), ``splade`` (learned-sparse impacts plus their Lucene impact index), ``dense`` (exact), a dense index of
    any kind (``dense:index=(binary:rescore=int8)``, or the index spec alone: ``binary:rescore=int8``), a multi-vector
    index (``maxsim``: token vectors, serving maxsim, muvera and the maxsim/colbert-prf rerankers; ``plaid:nbits=2``:
    the compressed tokens alone), or a registered kind. Several ``--kind`` with ``--shards N``: one sharded
    collection."""
    from rankstack.eval.datasets import load_beir
    from rankstack.models import ModelCache
    from rankstack.retrieval import kinds

    items = _index_items(args)
    if args.shards:
        return _index_sharded(args, items)
    if len(items) > 1:
        raise BadInput("one --kind per index folder (several kinds go into one sharded collection: add --shards N)")
    kind, settings = kinds.resolve(items[0], {"threads": args.threads})
    ds = load_beir(args.dataset, args.split)
    docs = list(ds.corpus.values())
    index = kind.write_folder(settings, ModelCache(), docs, Path(args.output))
    truncated = (getattr(index, "meta", None) or {}).get("truncated_documents", 0)
    if truncated:
        print(f"{truncated} documents were longer than the encoder's limit and were truncated")
    print(f"wrote {items[0]} index of {len(docs)} documents to {args.output}")
    return 0


def _index_sharded(args: argparse.Namespace, items: list) -> int:
    """``rankstack index --shards N --kind bm25 --kind dense --kind splade``: one sharded collection, built on Ray
    (``--ray-address``) or in this process."""
    from rankstack.distributed.build import build_sharded
    from rankstack.eval.datasets import load_beir

    ds = load_beir(args.dataset, args.split)
    address = args.ray_address
    index = build_sharded(list(ds.corpus.values()), args.output, shards=args.shards, indexes=[str(i) for i in items],
                          model=args.model, address=address, workers=args.workers or 2)
    b = index.params["build"]
    where = f"on {b['workers']} Ray workers" if address is not None else "in this process"
    print(f"wrote {len(index.shards)} shards ({' + '.join(e.spec for e in index.entries)}) of {len(index)} documents "
          f"to {args.output} in {b['seconds']:.1f} s {where} ({b['docs_per_s']:.1f} documents/s)")
    return 0


def add(sub) -> None:
    """The ``rankstack index`` parser."""
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    ix = sub.add_parser("index", help="build a persistent index from a BEIR corpus")
    ix.add_argument("--dataset", required=True, help="BEIR folder, BEIR dataset name, or hf:<repo>")
    ix.add_argument("--kind", action="append", default=None,
                    help="a retrieval kind with its options: bm25, splade (learned sparse), dense (exact), "
                         "dense:index=(binary:rescore=int8), maxsim (multi-vector token vectors), plaid:nbits=2 "
                         "(compressed tokens), a registered kind; or an index spec alone: flat, ivf-flat, hnsw, pq, "
                         "opq-pq, ivf-pq, sq8, binary (with options, e.g. 'pq:m=48')")
    ix.add_argument("--output", required=True, help="index directory to write (replaced atomically)")
    ix.add_argument("--split", default="test")
    ix.add_argument("--model", default=None, help=f"encoder of dense kinds (default {DEFAULT_DENSE_MODEL}) or of "
                                                  f"splade (default splade-tiny, offline)")
    ix.add_argument("--threads", type=int, default=None)
    ix.add_argument("--shards", type=int, default=None,
                    help="build a sharded collection of N shards (--kind bm25 --kind dense --kind splade, "
                         "repeatable), on Ray with --ray-address, else in this process")
    ray_args(ix, workers_help="Ray workers that encode and write shards (default 2)")
    ix.set_defaults(func=run)
