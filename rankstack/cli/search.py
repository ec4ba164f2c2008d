"""``rankstack search``: run a pipeline over index folders, a sharded collection, or a dataset's cached indexes."""

from __future__ import annotations

import argparse
import json

from rankstack.cli._common import is_sharded, ray_args, read_queries, sharded_resources
from rankstack.errors import BadInput


def run(args: argparse.Namespace) -> int:
    from rankstack.eval.trec import write_run
    from rankstack.pipeline import compile_pipeline
    from rankstack.pipeline.resources import IndexDirs

    queries = read_queries(args)
    if args.dataset:
        from rankstack.eval.datasets import load_beir
        from rankstack.pipeline import DatasetWorkspace

        if not args.pipeline:
            raise BadInput("with --dataset, name the pipeline: --pipeline SPEC (e.g. bm25, hybrid-rrf)")
        resources = DatasetWorkspace(load_beir(args.dataset, args.split), args.index_root, model=args.model)
        spec = args.pipeline
    else:
        if not args.index:
            raise BadInput("give --index DIR (built by `rankstack index`) or --dataset with --pipeline")
        resources = sharded_resources(args, args.index[0]) if is_sharded(args.index) else IndexDirs(args.index)
        spec = args.pipeline or resources.default_spec()
    resources.relevance_adapter = args.relevance_adapter
    pipe = compile_pipeline(spec, resources)
    contexts = args.context_tokens is not None
    if contexts and args.format == "trec":
        raise BadInput("--context-tokens prints packed contexts with --format text or json, not trec")
    if contexts:
        from rankstack.rag.packing import DEFAULT_CONTEXT_TOKENIZER, pack_context, token_counter

        count = token_counter(args.context_tokenizer or DEFAULT_CONTEXT_TOKENIZER)
    out = pipe.run(queries, args.k, with_documents=args.format == "text" or contexts, show_progress=not args.quiet)
    packed = {r.query.qid: pack_context(r, args.context_tokens, count, dedup=args.context_dedup)
              for r in out.rankings} if contexts else {}
    if args.output:
        write_run(out.run(args.tag), args.output)
    if args.format == "json":
        print(json.dumps([{"qid": r.query.qid, "query": r.query.text, "timings": out.timings,
                           "results": [{"rank": i, "docid": c.docid, "score": c.score}
                                       for i, c in enumerate(r.candidates, 1)],
                           **({"context": packed[r.query.qid].to_dict()} if contexts else {})}
                          for r in out.rankings]))
    elif args.format == "trec":
        for r in out.rankings:
            for i, c in enumerate(r.candidates, 1):
                print(f"{r.query.qid} Q0 {c.docid} {i} {c.score!r} {args.tag}")
    else:
        for ranking in out.rankings:
            print(f"# {ranking.query.text}")
            for rank, c in enumerate(ranking.candidates, 1):
                title = c.document.title[:70] if c.document is not None else ""
                print(f"{rank:>3}  {c.score:9.4f}  {c.docid}  {title}")
            if contexts:
                ctx = packed[ranking.query.qid]
                cited = ", ".join(f"[{c.number}] {c.docid}" for c in ctx.citations)
                print(f"## context: {ctx.tokens} of {ctx.budget} tokens; {cited}; left out: "
                      f"{', '.join(f'{d} ({why})' for d, why in ctx.dropped.items()) or 'none'}")
                print(ctx.text)
        print("# " + pipe.describe() + "  |  " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in out.timings.items()))
    return 0


def add(sub) -> None:
    """The ``rankstack search`` parser."""
    from rankstack.pipeline.spec import PRESETS
    from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    se = sub.add_parser("search", help="run a pipeline over index folders or a dataset's cached indexes")
    where = se.add_mutually_exclusive_group()
    where.add_argument("--index", action="append", help="an index folder from `rankstack index` (repeatable)")
    where.add_argument("--dataset", default=None, help="a BEIR dataset: its indexes are built or reused under "
                                                       "--index-root, exactly as `rankstack eval` does")
    se.add_argument("--pipeline", default=None, help=f"pipeline spec or preset ({', '.join(PRESETS)}); default with "
                                                     f"--index: that index's retriever (RRF over several)")
    se.add_argument("--query", action="append", help="query text (repeatable)")
    se.add_argument("--topics", default=None, help="queries from a file: TSV qid<TAB>text, or BEIR queries.jsonl")
    se.add_argument("-k", type=int, default=10, help="results per query")
    se.add_argument("--format", choices=("text", "json", "trec"), default="text")
    se.add_argument("--output", default=None, help="also write a TREC run file")
    se.add_argument("--tag", default="rankstack", help="run tag for trec output")
    se.add_argument("--split", default="test")
    se.add_argument("--model", default=DEFAULT_DENSE_MODEL, help="encoder of dense items that name none (--dataset)")
    se.add_argument("--index-root", default=DEFAULT_INDEX_ROOT, help="where --dataset indexes are cached")
    se.add_argument("--relevance-adapter", default=None, help="adapter file that filter(0.5) stages use")
    se.add_argument("--context-tokens", type=int, default=None,
                    help="also pack each query's passages, in rank order, into at most this many tokens for a "
                         "generator (near-duplicates dropped, citations [n]); printed after the results")
    se.add_argument("--context-tokenizer", default=None,
                    help="tokenizer that counts --context-tokens (a Hugging Face name or folder; default "
                         "all-MiniLM-L6-v2's, offline): give your generator's")
    se.add_argument("--context-dedup", type=float, default=0.8,
                    help="word 3-gram Jaccard at which a passage counts as a near-duplicate of one already packed")
    ray_args(se, workers=False)
    se.set_defaults(func=run)
