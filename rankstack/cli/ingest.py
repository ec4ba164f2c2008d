"""``rankstack ingest``: load a BEIR corpus or a JSONL file into a service collection."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


INGEST_MARKER = "ingest-complete.json"  # written when `rankstack ingest` has stored its whole source (make serve)


def _read_documents(path: str):
    """Documents from a BEIR folder (its corpus.jsonl) or a JSONL file of {_id|docid, title, text, metadata}."""
    from rankstack.eval.datasets import read_corpus

    p = Path(path)
    return list(read_corpus(p / "corpus.jsonl" if p.is_dir() else p).values())


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rankstack.service.app import ServiceState
    from rankstack.service.config import CollectionConfig, load_settings

    settings = load_settings(args.config, data_dir=args.data_dir)
    state = ServiceState(settings)
    docs = _read_documents(args.source)
    if args.name in settings.collections:
        col = state._open(settings.collections[args.name])
    elif (settings.data_dir / args.name / "collection.json").is_file():
        col = state._open(CollectionConfig.model_validate_json(
            (settings.data_dir / args.name / "collection.json").read_text()))
    else:
        cfg = {"name": args.name, "indexes": args.indexes, "encoder": args.encoder,
               "pipeline": {"retrievers": args.indexes}}
        col = state._open(CollectionConfig.model_validate(cfg))
    marker = settings.data_dir / args.name / INGEST_MARKER
    marker.unlink(missing_ok=True)  # until this source is in whole, the collection is not complete
    # documents already stored unchanged are skipped by upsert: an interrupted ingest, run again, goes on from there
    for i in tqdm(range(0, len(docs), args.batch_size), desc=f"ingest {args.name}", unit=" batches",
                  disable=args.quiet):
        col.upsert(docs[i:i + args.batch_size])
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(json.dumps({"source": str(args.source), "documents": len(docs), "collection_documents": len(col),
                               "log_seq": col.seq}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, marker)
    print(f"collection {args.name!r} in {settings.data_dir}: {len(col)} documents (log seq {col.seq})")
    return 0


def add(sub) -> None:
    """The ``rankstack ingest`` parser."""
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    ing = sub.add_parser("ingest", help="load a BEIR corpus or a JSONL file into a collection")
    ing.add_argument("--name", required=True, help="collection name")
    ing.add_argument("--source", required=True, help="BEIR folder or JSONL file of documents")
    ing.add_argument("--config", default=None)
    ing.add_argument("--data-dir", default=None)
    ing.add_argument("--indexes", nargs="+", default=["bm25", "dense"],
                     help="indexes of a new collection, as retriever specs (bm25, dense, "
                          "'dense:index=(binary:rescore=int8)'); its pipeline fuses them with RRF")
    ing.add_argument("--encoder", default=DEFAULT_DENSE_MODEL, help="dense encoder of a new collection, or hash[:dim]")
    ing.add_argument("--batch-size", type=int, default=1000)
    ing.set_defaults(func=run)
