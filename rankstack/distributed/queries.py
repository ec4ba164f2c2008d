"""Query batches spread over Ray workers: what ``rankstack eval --ray-address`` and ``rankstack rerank
--ray-address`` run.

Each worker is a Ray actor that builds its own pipeline resources from a *recipe* (a BEIR dataset and its index
cache, a sharded collection, or index folders) and compiles each spec once. The driver cuts the queries into
chunks, hands them out as workers free up, and reassembles the rankings in query order, so the run files equal
the local path's. A chunk whose worker dies is handed to another worker (Ray restarts the dead one); a chunk that
fails on every try raises :class:`QueriesFailed` naming its queries: nothing goes missing silently.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from rankstack.errors import RankStackError
from rankstack.records import Query, Ranking

logger = logging.getLogger(__name__)

__all__ = ["QueryPool", "QueriesFailed", "make_resources"]


class QueriesFailed(RankStackError):
    """Some queries got no answer from any worker."""


def make_resources(recipe: dict):
    """Pipeline resources from a recipe: ``{"dataset": path, "split", "index_root", "model", "k1", "b"}``,
    ``{"sharded": path}`` or ``{"index": [paths]}``."""
    if "dataset" in recipe:
        from rankstack.eval.datasets import load_beir
        from rankstack.pipeline.workspace import DatasetWorkspace

        ds = load_beir(recipe["dataset"], recipe.get("split", "test"))
        return DatasetWorkspace(ds, recipe["index_root"], model=recipe["model"], k1=recipe.get("k1", 0.9),
                                b=recipe.get("b", 0.4), threads=1)
    if "sharded" in recipe:
        from rankstack.distributed.sharded import ShardedResources

        return ShardedResources(recipe["sharded"])
    if "index" in recipe:
        from rankstack.pipeline.resources import IndexDirs

        return IndexDirs(recipe["index"])
    return None  # rerank only: no retrieval resources


def _bare(r: Ranking) -> Ranking:
    """Without documents: rankings cross process boundaries as ids and scores."""
    return Ranking.from_arrays(r.query, r.docids, r.scores)


class _Worker:
    """A Ray actor: resources built once, specs compiled once, chunks run on request."""

    def __init__(self, recipe: dict, relevance_adapter: str | None = None):
        self.resources = make_resources(recipe)
        if self.resources is not None:
            self.resources.relevance_adapter = relevance_adapter
        self.pipes: dict[str, Any] = {}
        self.rerankers: dict[str, Any] = {}

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, spec: str, queries: list[Query], k: int, keep_inputs: bool):
        from rankstack.pipeline import compile_pipeline

        if spec not in self.pipes:
            self.pipes[spec] = compile_pipeline(spec, self.resources)
        out = self.pipes[spec].run(queries, k, keep_inputs=keep_inputs, show_progress=False)
        return ([_bare(r) for r in out.rankings], out.timings, out.stats,
                {label: [_bare(r) for r in rs] for label, rs in out.inputs.items()})

    def rerank(self, spec: str, rankings: list[Ranking], k: int):
        from rankstack.pipeline import Given, Pipeline, Rerank
        from rankstack.rerank.factory import RerankerSpec, build_reranker

        if spec not in self.rerankers:
            parsed = RerankerSpec.parse(spec)
            self.rerankers[spec] = Rerank(build_reranker(parsed), parsed.stage_depth)
        pipe = Pipeline(Given(rankings, name="input"), [self.rerankers[spec]])
        out = pipe.run([r.query for r in rankings], k, show_progress=False)
        return [_bare(r) for r in out.rankings], out.timings, out.stats, {}


class QueryPool:
    """``workers`` Ray actors over ``recipe``; :meth:`run` and :meth:`rerank` return a
    :class:`~rankstack.pipeline.core.PipelineOutput` in query order. ``chunk``: queries per task."""

    def __init__(self, recipe: dict, *, address: str, workers: int = 2, chunk: int = 16, attempts: int = 3,
                 cpus_per_worker: float = 1.0, relevance_adapter: str | None = None):
        from rankstack.distributed.cluster import connect

        ray = connect(address, num_cpus=workers)
        self.ray = ray
        self.chunk, self.attempts = max(1, int(chunk)), int(attempts)
        actor = ray.remote(_Worker).options(num_cpus=cpus_per_worker, max_restarts=2, max_task_retries=0,
                                            scheduling_strategy="SPREAD")
        self.workers = [actor.remote(recipe, relevance_adapter) for _ in range(max(1, int(workers)))]
        ray.get([w.pid.remote() for w in self.workers])  # resources open, or fail now

    def pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def run(self, spec: str, queries: Sequence[Query], k: int, *, keep_inputs: bool = False, show_progress=None):
        qs = list(queries)
        return self._spread("run", lambda part: (str(spec), part, k, keep_inputs), qs, [q.qid for q in qs],
                            show_progress)

    def rerank(self, spec: str, rankings: Sequence[Ranking], k: int, *, show_progress=None):
        """Rerank given candidates; they travel with their passage texts (workers hold no documents), the
        reranked rankings come back as ids and scores."""
        rs = list(rankings)
        return self._spread("rerank", lambda part: (str(spec), part, k), rs, [r.query.qid for r in rs],
                            show_progress)

    def _spread(self, method: str, args, items: list, qids: list[str], show_progress):
        from ray.exceptions import RayActorError, RayTaskError
        from tqdm.auto import tqdm

        from rankstack._progress import progress_enabled
        from rankstack.pipeline.core import PipelineOutput

        chunks = [list(range(i, min(i + self.chunk, len(items)))) for i in range(0, len(items), self.chunk)]
        todo = list(range(len(chunks)))
        tries = [0] * len(chunks)
        results: dict[int, tuple] = {}
        running: dict[Any, tuple[int, int]] = {}
        free = list(range(len(self.workers)))
        failed: dict[int, str] = {}
        bar = tqdm(total=len(items), desc=f"{method} on {len(self.workers)} Ray workers", unit=" queries",
                   disable=not progress_enabled(show_progress))
        t0 = time.perf_counter()
        while todo or running:
            while todo and free:
                c, w = todo.pop(0), free.pop(0)
                tries[c] += 1
                ref = getattr(self.workers[w], method).remote(*args([items[i] for i in chunks[c]]))
                running[ref] = (c, w)
            ready, _ = self.ray.wait(list(running), num_returns=1)
            c, w = running.pop(ready[0])
            try:
                results[c] = self.ray.get(ready[0])
                bar.update(len(chunks[c]))
            except RayTaskError as exc:  # the pipeline raised: a real error, not a lost worker
                bar.close()
                raise exc.as_instanceof_cause() from None
            except RayActorError as exc:
                logger.warning("worker %d died running %d queries (%s); handing them to another worker", w,
                               len(chunks[c]), type(exc).__name__)
                if tries[c] < self.attempts:
                    todo.append(c)
                else:
                    failed[c] = type(exc).__name__
            free.append(w)
        bar.close()
        if failed:
            lost = [qids[i] for c in failed for i in chunks[c]]
            raise QueriesFailed(f"{len(lost)} queries got no answer after {self.attempts} tries on the Ray workers "
                                f"(first: {lost[:5]}); nothing was written. Check `ray status` and rerun")
        rankings, timings, stats, inputs = [], {}, {}, {}
        for c in range(len(chunks)):
            rk, tm, st, inp = results[c]
            rankings += rk
            stats.update(st)
            for name, v in tm.items():
                timings[name] = timings.get(name, 0.0) + v
            for label, rs in inp.items():
                inputs.setdefault(label, []).extend(rs)
        wall = time.perf_counter() - t0
        busy = sum(timings.values())
        if busy > 0:  # stage seconds are summed over workers that ran at once: report the batch's wall clock
            timings = {name: v * wall / busy for name, v in timings.items()}
        logger.info("%d queries on %d Ray workers in %.1f s", len(items), len(self.workers), wall)
        return PipelineOutput(rankings=rankings, timings=timings, stats=stats, inputs=inputs)

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
