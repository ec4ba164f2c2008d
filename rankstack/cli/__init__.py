"""The ``rankstack`` command: one module per subcommand (index, search, eval, rerank, relevance, serve, ingest,
install-llm), each with its parser (``add``) and what it runs (``run``)."""

from __future__ import annotations

import argparse
import logging
import sys

from rankstack.cli import eval as eval_cmd
from rankstack.cli import index, ingest, install_llm, relevance, rerank, search, serve
from rankstack.cli.ingest import INGEST_MARKER
from rankstack.errors import RankStackError

logger = logging.getLogger("rankstack")

__all__ = ["main", "build_parser", "INGEST_MARKER"]

COMMANDS = (index, search, relevance, eval_cmd, serve, ingest, rerank, install_llm)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankstack", description="Retrieval, reranking and BEIR/TREC evaluation.")
    p.add_argument("-v", "--verbose", action="count", default=1, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
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


if __name__ == "__main__":
    sys.exit(main())
