"""What several ``rankstack`` commands share: Ray options, reading queries, recognising a sharded collection, run
file names."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankstack.errors import BadInput

__all__ = ["ray_args", "read_queries", "is_sharded", "sharded_resources", "run_file_name", "on_error_arg",
           "write_run_file", "PARTIAL_EXIT"]

PARTIAL_EXIT = 3  # the exit status of a run that wrote only the queries it finished


def ray_args(p: argparse.ArgumentParser, *, workers: bool = True, replicas: bool = True,
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


def read_queries(args: argparse.Namespace):
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


def is_sharded(paths) -> bool:
    from rankstack.index.base import read_params

    return bool(paths) and len(paths) == 1 and read_params(paths[0], None, None).get("kind") == "sharded"


def sharded_resources(args: argparse.Namespace, path):
    from rankstack.distributed.sharded import ShardedResources

    return ShardedResources(path, address=args.ray_address, replicas=args.replicas,
                            allow_partial=getattr(args, "allow_partial", False))


def run_file_name(name: str) -> str:
    import re

    from rankstack.pipeline.resources import slug

    return name if re.fullmatch(r"[A-Za-z0-9_.\-]+", name) else slug(name)


def on_error_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="a query a reranker cannot finish (after its context fallbacks): stop there (default) or "
                        "skip it and go on; either way the finished queries are written, to RUN.partial with "
                        "RUN.partial.json naming the failed ones, and the exit status is 3")


def write_run_file(run, path, failed=None, total: int | None = None) -> Path:
    """Write ``run`` to ``path``; where queries failed (``failed``: qid -> why), to ``path.partial`` instead, with
    ``path.partial.json`` beside it, so a partial run is never mistaken for a whole one. A whole run removes the
    partial files an earlier attempt left."""
    import json
    import os

    from rankstack.eval.trec import write_run

    path = Path(path)
    marker = path.with_name(path.name + ".partial")
    sidecar = path.with_name(path.name + ".partial.json")
    if not failed:
        out = write_run(run, path)
        marker.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return out
    out = write_run(run, marker)
    first = next(iter(failed))
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps({"partial": True, "finished_queries": len(run.qids), "total_queries": total,
                               "first_failure": first, "failed": failed}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    return out
