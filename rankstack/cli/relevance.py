"""``rankstack relevance fit``: fit a relevance filter's score-to-probability map on labelled queries."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Fit a relevance adapter (or the logistic baseline) on a labelled split and save it as a small JSON file."""
    from rankstack.eval.datasets import load_beir
    from rankstack.pipeline import DatasetWorkspace
    from rankstack.rag.relevance import fit_on_dataset

    ds = load_beir(args.dataset, args.split)
    ws = DatasetWorkspace(ds, args.index_root, model=args.model)
    model = fit_on_dataset(ds, args.pipeline, method=args.method, depth=args.depth, workspace=ws,
                           show_progress=not args.quiet)
    model.save(args.output)
    print(f"{args.method} fitted on {ds.name} {args.split} ({model.trained_on['queries']} queries) for pipeline "
          f"{model.pipeline!r}: threshold {model.threshold:.2f}; saved to {args.output}\n"
          f"use it: --pipeline \"{model.pipeline} >> relevance:adapter={args.output}\"")
    return 0


def add(sub) -> None:
    """The ``rankstack relevance`` parser."""
    from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    rel = sub.add_parser("relevance", help="relevance filtering: fit a score-to-probability adapter on labelled "
                                           "queries")
    relsub = rel.add_subparsers(dest="relevance_command", required=True)
    rf = relsub.add_parser("fit", help="fit an adapter for one pipeline on a labelled split (e.g. NFCorpus train)")
    rf.add_argument("--dataset", required=True, help="BEIR folder, BEIR dataset name, or hf:<repo>")
    rf.add_argument("--split", default="train", help="labelled split to fit on (never the one you report)")
    rf.add_argument("--pipeline", required=True, help="the pipeline whose scores it maps (a preset or a spec)")
    rf.add_argument("--method", choices=("adapter", "logistic"), default="adapter",
                    help="adapter: query-dependent map (Cosine Adapter); logistic: score-distribution baseline")
    rf.add_argument("--depth", type=int, default=100, help="top candidates per query it scores (default 100)")
    rf.add_argument("--model", default=DEFAULT_DENSE_MODEL, help="encoder of dense items and of the adapter's "
                                                                 "query features")
    rf.add_argument("--index-root", default=DEFAULT_INDEX_ROOT, help="where indexes are cached")
    rf.add_argument("--output", required=True, help="adapter file to write (JSON)")
    rf.set_defaults(func=run)
