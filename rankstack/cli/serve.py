"""``rankstack serve``: the search and rerank HTTP service."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
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


def add(sub) -> None:
    """The ``rankstack serve`` parser."""
    sv = sub.add_parser("serve", help="run the search and rerank HTTP service")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--config", default=None, help="TOML or YAML service config (collections, limits, api_keys)")
    sv.add_argument("--data-dir", default=None, help="where collections live (default: ./data or the config's)")
    sv.add_argument("--api-key", action="append", help="accepted X-API-Key (repeatable); none = open")
    sv.set_defaults(func=run)
