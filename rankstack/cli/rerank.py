"""``rankstack rerank``: rerank candidates (a TREC DL folder, a RankGPT JSON, or a BEIR run file) with a named
reranker; writes a run and, with qrels, a significance report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankstack.cli._common import PARTIAL_EXIT, on_error_arg, ray_args, write_run_file
from rankstack.errors import BadInput


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
        name = Path(args.trec_dl).name
        rankings, qrels, label = dl.candidates, dl.qrels, name if name == dl.year else f"{name} ({dl.year})"
        if args.year is None:
            print(f"TREC DL year {dl.year}: the topics and qrels in {args.trec_dl} (--year picks another)")
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


def run(args: argparse.Namespace) -> int:
    from rankstack.eval.metrics import evaluate
    from rankstack.eval.report import build_report
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
        result = pipe.run([r.query for r in rankings], args.k, show_progress=not args.quiet, on_error=args.on_error)
        describe, reranker_name = pipe.describe(), reranker.name
    out = result.rankings
    seconds = sum(result.timings.values()) / max(1, len(out))
    written = write_run_file(Run.from_rankings(out, name=args.tag), args.output, result.failed, len(rankings))
    print(f"reranked {len(out)} queries with {describe}: {seconds:.2f} s/query; run in {written}")
    llm = [s for s in result.stats.values() if "llm_forward_passes" in s]
    if llm:
        n = len(llm)

        def total(key: str) -> float:
            return sum(s.get(f"llm_{key}", 0.0) for s in llm)

        def count(key: str) -> int:
            return sum(1 for s in llm if s.get(f"llm_{key}", 0) > 0)

        print(f"per query: {total('forward_passes') / n:.1f} forward passes, {total('prompt_tokens') / n:.0f} "
              f"prompt tokens, {total('generated_tokens') / n:.1f} generated tokens, {total('repairs'):.0f} repairs, "
              f"{total('truncated_passages'):.0f} truncated passages")
        print(f"context fallbacks: {count('shrunk_prompts')} of {n} queries had passages cut further to fit one "
              f"prompt, {count('window_fallbacks')} were ranked in windows")
    if result.failed:
        first, why = next(iter(result.failed.items()))
        print(f"error: {len(result.failed)} of {len(rankings)} queries not reranked; query {first} failed: {why}. "
              f"The {len(out)} finished are in {written}, the failed ones in {written}.json")
        return PARTIAL_EXIT
    if qrels is not None:
        keep = {r.query.qid for r in out}
        qrels = Qrels(judgments={q: j for q, j in qrels.judgments.items() if q in keep})
        metrics = args.metric or ["nDCG@10", "RR@10", "R@100"]
        results = {"input": evaluate(Run.from_rankings(rankings), qrels, metrics, drop_self=False),
                   reranker_name: evaluate(Run.from_rankings(out), qrels, metrics, drop_self=False)}
        print(build_report(f"{label} ({len(out)} queries)", results, baseline="input",
                           metrics=metrics).to_markdown())
    return 0


def add(sub) -> None:
    """The ``rankstack rerank`` parser."""
    rr = sub.add_parser("rerank", help="rerank candidates (a TREC DL folder, a RankGPT JSON, or a BEIR run file) "
                                       "with a named reranker; writes a run and, with qrels, a significance report")
    rr.add_argument("--reranker", required=True,
                    help="spec: kind[:option=value,...], e.g. 'first:model=smollm2,depth=20' or "
                         "'icr:model=gemma3-270m,window=20,stride=10'; kinds: embedding, cross-encoder, icr, first, "
                         "listwise, setwise, maxsim (late interaction; candidates' text encoded). LLM kinds take "
                         "weights=fp32|bf16|int8|int4-g32|int4-g64|int4-g128|int4-g32-outliers, kv=fp32|int4|int2 "
                         "and compute=auto|fp32|bf16 (auto: bf16 where the CPU or GPU multiplies it in hardware); icr "
                         "also order=retriever-last|retriever-first and attention=auto|dense|passage-block|duo|topk "
                         "(auto: passage-block where one prompt holds every candidate)")
    src = rr.add_mutually_exclusive_group()
    src.add_argument("--trec-dl", default=None, help="a TREC DL folder (topics, qrels, bm25_top100.json)")
    src.add_argument("--candidates", default=None, help="RankGPT-style JSON: [{query, hits: [{qid, docid, rank, "
                                                        "score, content}]}]")
    src.add_argument("--dataset", default=None, help="BEIR folder or name; needs --run")
    rr.add_argument("--run", default=None, help="TREC run file whose candidates to rerank")
    rr.add_argument("--qrels", default=None, help="TREC qrels (default: the dataset's)")
    rr.add_argument("--year", default=None, help="with --trec-dl: which topics/qrels (dl19 reads "
                                                 "topics.dl19-passage.txt); default: the one year the folder holds")
    rr.add_argument("--split", default="test")
    rr.add_argument("-k", type=int, default=100, help="candidates read (and returned) per query (default 100)")
    rr.add_argument("--queries", type=int, default=None, help="only the first N (judged) queries")
    rr.add_argument("--metric", action="append", help="ir_measures name, repeatable (default nDCG@10 RR@10 R@100)")
    rr.add_argument("--tag", default="rankstack-rerank", help="run tag written in the run file")
    rr.add_argument("--output", required=True, help="run file to write")
    ray_args(rr, replicas=False, workers_help="spread the queries over N Ray workers, each with its own model "
                                               "(needs --ray-address); same run file")
    rr.add_argument("--chunk", type=int, default=4, help="queries per Ray task (default 4)")
    on_error_arg(rr)
    rr.set_defaults(func=run)
