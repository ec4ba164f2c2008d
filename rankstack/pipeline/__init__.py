"""One pipeline, from index to reranker, the same in Python, ``rankstack eval``, ``rankstack search``,
``rankstack rerank`` and the service.

- :mod:`.spec`: what to run, as a string (``rrf(bm25 % 100, dense % 100) >> first:depth=20``) or a table;
  presets ``bm25``, ``dense``, ``hybrid-rrf``, ``hybrid-interp``.
- :mod:`.core`: the executor (:class:`Pipeline` and its stages), with per-stage timings and per-query stats.
- :mod:`.compile`: spec -> pipeline over a :class:`~rankstack.pipeline.resources.Resources` (a dataset
  workspace, index folders, or a service collection).
"""

import importlib

# names -> the module that defines them, imported on first use: importing rankstack.pipeline.core (the executor and
# the stage interfaces, which every retriever and reranker imports) must not import the compiler above them
_EXPORTS = {
    "compile_pipeline": "compile", "Pipeline": "core", "PipelineOutput": "core", "Stage": "core", "Stages": "core",
    "Cutoff": "core", "Rerank": "core", "Filter": "core", "Apply": "core", "Retrieve": "core", "Fuse": "core",
    "Given": "core", "Resources": "resources", "IndexDirs": "resources", "PRESETS": "spec", "PipelineSpec": "spec",
    "parse_pipeline": "spec", "pipeline_from_table": "spec", "DatasetWorkspace": "workspace",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rankstack.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rankstack.pipeline.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(__all__)
