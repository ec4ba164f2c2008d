"""One pipeline, from index to reranker, the same in Python, ``rankstack eval``, ``rankstack search``,
``rankstack rerank`` and the service.

- :mod:`.spec`: what to run, as a string (``rrf(bm25 % 100, dense % 100) >> first:depth=20``) or a table;
  presets ``bm25``, ``dense``, ``hybrid-rrf``, ``hybrid-interp``.
- :mod:`.core`: the executor (:class:`Pipeline` and its stages), with per-stage timings and per-query stats.
- :mod:`.compile`: spec -> pipeline over a :class:`~rankstack.pipeline.resources.Resources` (a dataset
  workspace, index folders, or a service collection).
- :mod:`.tuning`: ``alpha=auto`` on labelled queries.
"""

from rankstack.pipeline.compile import compile_pipeline
from rankstack.pipeline.core import (Apply, Cutoff, Filter, Fuse, Given, Pipeline, PipelineOutput, Rerank, Retrieve,
                                     Stage, Stages)
from rankstack.pipeline.resources import IndexDirs, Resources
from rankstack.pipeline.spec import PRESETS, PipelineSpec, parse_pipeline, pipeline_from_table
from rankstack.pipeline.workspace import DatasetWorkspace

__all__ = ["Pipeline", "PipelineOutput", "Stage", "Stages", "Cutoff", "Rerank", "Filter", "Apply", "Retrieve",
           "Fuse", "Given", "compile_pipeline", "parse_pipeline", "pipeline_from_table", "PipelineSpec", "PRESETS",
           "Resources", "IndexDirs", "DatasetWorkspace"]
