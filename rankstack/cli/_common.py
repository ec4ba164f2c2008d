"""What several ``rankstack`` commands share: Ray options, reading queries, recognising a sharded collection, run
file names."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankstack.errors import BadInput

__all__ = ["ray_args", "read_queries", "is_sharded", "sharded_resources", "run_file_name"]


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
