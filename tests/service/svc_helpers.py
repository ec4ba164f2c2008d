"""Shared helpers of the service tests."""

from __future__ import annotations

from rankstack.service.config import load_settings

HYBRID = {"name": "x", "indexes": ["bm25", "dense"], "encoder": "hash:64",
          "pipeline": {"retrievers": ["bm25", "dense"], "fusion": "rrf"}}


def make_settings(tmp_path, **kw):
    kw.setdefault("default_collection", HYBRID)
    return load_settings(None, data_dir=str(tmp_path / "data"), **kw)


DOCS = [
    {"docid": "cat", "title": "Cats", "text": "Cats are small domesticated mammals that purr.", "metadata": {"kind": "animal"}},
    {"docid": "dog", "title": "Dogs", "text": "Dogs are loyal animals descended from wolves.", "metadata": {"kind": "animal"}},
    {"docid": "py", "title": "Python", "text": "Python is a programming language.", "metadata": {"kind": "code"}},
    {"docid": "rs", "title": "Rust", "text": "Rust is a systems programming language with memory safety.", "metadata": {"kind": "code"}},
]
