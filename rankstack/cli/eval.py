"""``rankstack eval``: run pipelines on a BEIR dataset: metrics table, run files, significance."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankstack.cli._common import (PARTIAL_EXIT, is_sharded, on_error_arg, ray_args, run_file_name, sharded_resources,
                                   write_run_file)
from rankstack.errors import BadInput


def run(args: argparse.Namespace) -> int:
    from rankstack.eval.metrics import DEFAULT_METRICS
    from rankstack.eval.report import build_report
    from rankstack.eval.runner import named_specs, run_pipelines

    from rankstack.eval.datasets import load_beir

    names = list(named_specs(args.pipeline))  # every spec is checked before data or models load
    metrics = args.metric or list(DEFAULT_METRICS)
    ds = load_beir(args.dataset, args.split)
    workspace, pool, recipe = None, None, None
    if args.index:
        from rankstack.pipeline.workspace import corpus_fingerprint

        if not is_sharded([args.index]):
            raise BadInput(f"eval --index takes a sharded collection (rankstack index --shards N); {args.index} is "
                           f"not one. Without --index, eval builds and caches the dataset's own indexes")
        from rankstack.retrieval.sharded import ShardSet

        sharded = ShardSet.load(args.index)  # its docids are read once, here
        if sharded.params.get("corpus_sha1") != corpus_fingerprint(ds.corpus):
            raise BadInput(f"{args.index} was built from another corpus than {args.dataset}; rebuild it from this "
                           f"dataset")
        workspace = sharded_resources(args, sharded) if not args.workers else None
        recipe = {"sharded": str(Path(args.index).resolve())}
    if args.workers:
        from rankstack.distributed.queries import QueryPool

        if not args.ray_address:
            raise BadInput("--workers spreads queries over Ray workers: give --ray-address (local, auto, HOST:PORT)")
        recipe = recipe or {"dataset": str(Path(ds.path).resolve()) if ds.path else args.dataset,
                            "split": args.split, "index_root": str(Path(args.index_root).resolve()),
                            "model": args.model, "k1": args.k1, "b": args.b}
        pool = QueryPool(recipe, address=args.ray_address, workers=args.workers,
                         relevance_adapter=args.relevance_adapter)
        if args.index:
            from rankstack.distributed.sharded import ShardedResources

            workspace = ShardedResources(sharded)  # the driver's view: checks specs, tunes alpha=auto
    ds, results, ws = run_pipelines(ds, args.pipeline, split=args.split, index_root=args.index_root,
                                    k=args.k, metrics=metrics, model=args.model, k1=args.k1, b=args.b,
                                    threads=args.threads, tune_split=args.tune_split, workspace=workspace,
                                    show_progress=not args.quiet, relevance_adapter=args.relevance_adapter,
                                    pool=pool, on_error=args.on_error)
    out = Path(args.output_dir) / ds.name
    files = {}
    for name, res in results.items():
        stem = run_file_name(res.input_of) + ".rerank-input" if res.input_of else run_file_name(name)
        files[name] = str(write_run_file(res.run, out / f"{stem}.{args.split}.trec", res.failed, len(ds.queries)))
    inputs = [n for n, r in results.items() if r.input_of]
    # the baseline: --baseline, else the first pipeline; a single reranking pipeline is tested against its input
    baseline = args.baseline or (inputs[0] if len(names) == 1 and inputs else names[0])
    if baseline not in results and baseline in names:  # a run stopped before it (--on-error stop)
        baseline = names[0]
    if baseline not in results:
        raise BadInput(f"--baseline {baseline!r} is not one of the pipelines {list(results)}")
    extra = {name: {k: v for k, v in res.stats.items() if k in ("qps", "alpha", "tuned_on", "index_seconds",
                                                                 "encode_docs_per_s", "set_P", "set_R", "set_F1",
                                                                 "empty", "kept", "failed_queries")}
             for name, res in results.items()}
    details = {name: {"spec": str(res.spec), "run_file": files[name], **res.stats} for name, res in results.items()}
    report = build_report(f"{ds.name} ({args.split}, {len(ds.queries)} queries)",
                          {n: r.result for n, r in results.items()},
                          baseline=baseline if len(results) > 1 else None, metrics=metrics, extra=extra,
                          details=details)
    (out / f"report.{args.split}.md").write_text(report.to_markdown() + "\n")
    (out / f"report.{args.split}.json").write_text(report.to_json() + "\n")
    print(report.to_markdown())
    for name, res in results.items():
        if name != str(res.spec) and not res.input_of:
            print(f"  {name} = {res.spec}")
    print(f"\nrun files and reports in {out}")
    return _report_failures(results, names, files, len(ds.queries))


def _report_failures(results, names, files, total: int) -> int:
    """Say which pipelines left queries out (and which did not run after them); the exit status."""
    failed = {name: res for name, res in results.items() if res.failed}
    for name, res in failed.items():
        first, why = next(iter(res.failed.items()))
        print(f"error: {name}: {len(res.failed)} of {total} queries not run; query {first} failed: {why}. "
              f"Its row and {files[name]} cover the {total - len(res.failed)} finished")
    missing = [n for n in names if n not in results]
    if missing:
        print(f"error: not run after that failure: {', '.join(missing)} (--on-error skip goes on past it)")
    return PARTIAL_EXIT if failed else 0


def add(sub) -> None:
    """The ``rankstack eval`` parser."""
    from rankstack.pipeline.spec import PRESETS, string_help
    from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
    from rankstack.retrieval.encoders import DEFAULT_DENSE_MODEL

    STRING_HELP = string_help().replace("%", "%%")  # argparse formats help with %: "% k" must reach it as "%% k"
    ev = sub.add_parser("eval", help="run pipelines on a BEIR dataset: metrics table, run files, significance")
    ev.add_argument("--dataset", required=True, help="BEIR folder, BEIR dataset name, or hf:<repo>")
    ev.add_argument("--pipeline", action="append", required=True,
                    help=f"a preset ({', '.join(PRESETS)}), a spec, or NAME=SPEC; repeat to compare several (the "
                         f"first is the significance baseline unless --baseline). {STRING_HELP}")
    ev.add_argument("--split", default="test")
    ev.add_argument("-k", type=int, default=1000, help="results per query in each run (default 1000)")
    ev.add_argument("--metric", action="append", help="ir_measures name, repeatable (default: nDCG@10 R@100 "
                                                       "R@1000 AP RR@10)")
    ev.add_argument("--baseline", default=None)
    ev.add_argument("--model", default=DEFAULT_DENSE_MODEL, help="encoder of dense items that name none")
    ev.add_argument("--k1", type=float, default=0.9, help="BM25 k1 where a bm25 item sets none")
    ev.add_argument("--b", type=float, default=0.4, help="BM25 b where a bm25 item sets none")
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--tune-split", default="auto", help="where alpha=auto is tuned: auto (dev if the dataset has "
                                                         "it, else 2-fold cross-validation), a split name, or none")
    ev.add_argument("--index-root", default=DEFAULT_INDEX_ROOT, help="where indexes are cached")
    ev.add_argument("--output-dir", default="runs")
    ev.add_argument("--relevance-adapter", default=None, help="adapter file that filter(0.5) stages use (from "
                                                              "`rankstack relevance fit`)")
    ev.add_argument("--index", default=None, help="evaluate over a sharded collection (rankstack index --shards N) "
                                                  "built from this dataset, instead of the cached single indexes")
    ray_args(ev, workers_help="spread the queries over N Ray workers (needs --ray-address); same run files")
    on_error_arg(ev)
    ev.set_defaults(func=run)
