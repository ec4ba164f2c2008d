"""Scatter a query batch to every shard, gather, merge exactly.

Shards are served in-process (``address=None``: every shard opened here) or by Ray actors, ``replicas`` per shard,
spread over the cluster's nodes. The router has one search call for every retrieval kind: it sends each shard the
batch once (queries already prepared by the kind's retriever: BM25 terms analysed, vectors encoded, so shard servers
hold only arrays), merges the shards' top-k lists, and leaves fusion and reranking to the pipeline, which runs once,
after the merge.

Failures are never silent. A shard call that fails (its process died, its node went away, or it did not answer
within ``timeout_s``) is retried on the shard's next replica, and, for an actor Ray restarts, on the same one, up to
``attempts`` times. A shard that still has no answer either fails the batch with :class:`ShardUnavailable`
(naming the shard and the queries), or, with ``allow_partial=True``, is left out: the batch is answered from the
other shards and :meth:`ShardRouter.take_failed` says which shards are missing, so the service can flag the
response as partial.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from rankstack.errors import RankStackError
from rankstack.retrieval.sharded import Shard, ShardSet, merge_topk

logger = logging.getLogger(__name__)

__all__ = ["ShardRouter", "ShardUnavailable", "ShardServer"]


class ShardUnavailable(RankStackError):
    """A shard gave no answer after every retry."""


class ShardServer:
    """What a shard's Ray actor runs: one :class:`Shard`, opened from the shared folder."""

    def __init__(self, root: str, number: int):
        self.shard = Shard(root, number)

    def search(self, folder, settings, derived_key, queries, k, params):
        return self.shard.search(folder, settings, derived_key, queries, k, params)

    def score(self, folder, queries, rows):
        return self.shard.score(folder, queries, rows)

    def documents(self, positions):
        return self.shard.documents(positions)

    def health(self) -> dict:
        out = self.shard.health()
        try:
            import ray

            out["node"] = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - health must answer even outside Ray
            pass
        return out


class ShardRouter:
    """``index``: the :class:`~rankstack.retrieval.sharded.ShardSet`; ``address``: None (shards in this process) or a
    Ray address."""

    def __init__(self, index: ShardSet, *, address: str | None = None, replicas: int = 1,
                 timeout_s: float = 120.0, attempts: int = 3, allow_partial: bool = False, max_restarts: int = 1,
                 actor_cpus: float = 0.1):
        self.index = index
        self.address = address
        self.timeout_s, self.attempts, self.allow_partial = float(timeout_s), int(attempts), bool(allow_partial)
        self._local = threading.local()
        self.replicas: list[list[Any]] = []
        self.shards: list[Shard] = []
        if address is None:
            self.shards = [index.open_shard(i) for i in range(len(index.shards))]
            return
        from rankstack.distributed.cluster import connect

        ray = connect(address)
        actor = ray.remote(ShardServer).options(num_cpus=actor_cpus, max_restarts=max_restarts,
                                                max_task_retries=0, scheduling_strategy="SPREAD")
        root = str(index.path.resolve())
        self.replicas = [[actor.remote(root, i) for _ in range(max(1, int(replicas)))]
                         for i in range(len(index.shards))]
        self._next = [0] * len(self.replicas)
        ray.get([r.health.remote() for rs in self.replicas for r in rs], timeout=self.timeout_s)  # loaded, or fail now

    def take_failed(self) -> dict[int, str]:
        """Shards left out of this thread's calls since the last ``take_failed`` (``allow_partial``): shard
        number -> error. A caller clears it before a request and reads it after (a fusion makes several calls)."""
        failed = getattr(self._local, "failed", {})
        self._local.failed = {}
        return failed

    # ---- calls ----------------------------------------------------------------------------------------------

    def _scatter(self, method: str, args: tuple, what: str, only: int | None = None) -> list[Any | None]:
        """Every shard's answer to ``method(*args)`` (None for a shard left out); ``only``: that shard's alone."""
        if not hasattr(self._local, "failed"):
            self._local.failed = {}
        numbers = range(len(self.shards or self.replicas)) if only is None else [only]
        if not self.replicas:
            return [getattr(self.shards[i], method)(*args) if i in numbers else None for i in range(len(self.shards))]
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            from ray.exceptions import ActorUnavailableError
        except ImportError:  # older Ray
            ActorUnavailableError = RayActorError  # noqa: N806

        refs = {i: self._submit(i, method, args) for i in numbers}
        out: list[Any | None] = [None] * len(self.replicas)
        for i, ref in refs.items():
            errors = []
            for attempt in range(self.attempts):
                try:
                    out[i] = ray.get(ref, timeout=self.timeout_s)
                    break
                except RayTaskError as exc:  # the shard ran and raised: a bad request, not a dead shard
                    raise exc.as_instanceof_cause() from None
                except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}")
                    logger.warning("shard %d did not answer (%s, attempt %d of %d); retrying on a replica", i,
                                   type(exc).__name__, attempt + 1, self.attempts)
                    if attempt + 1 < self.attempts:
                        time.sleep(min(2.0, 0.25 * 2 ** attempt))  # a restarting actor needs a moment
                        ref = self._submit(i, method, args)
            if out[i] is None:
                msg = ", ".join(errors)
                if not self.allow_partial:
                    raise ShardUnavailable(
                        f"shard {i} ({self.index.shards[i]['name']}) did not answer {what} after {self.attempts} "
                        f"attempts ({msg}); nothing was returned. Check the Ray cluster (`ray status`), add replicas "
                        f"(replicas=2), or allow partial results")
                self._local.failed[i] = msg
                logger.error("shard %d left out of %s (%s): results are partial", i, what, msg)
        return out

    def _submit(self, i: int, method: str, args: tuple):
        rs = self.replicas[i]
        actor = rs[self._next[i] % len(rs)]
        self._next[i] += 1
        return getattr(actor, method).remote(*args)

    def search(self, folder: str, settings, derived_key: str | None, queries, k: int, params: dict, nq: int):
        """Per query: the collection's top ``k`` (positions, scores) over every shard's index in ``folder`` (or its
        derived index ``derived_key``), merged by (score, position)."""
        answers = self._scatter("search", (folder, settings, derived_key, queries, k, dict(params or {})),
                                f"{nq} {settings.kind} queries")
        got = [a for a in answers if a is not None]
        return [merge_topk([a[q] for a in got], k) for q in range(nq)]

    def score(self, shard: int, folder: str, queries, rows: np.ndarray) -> np.ndarray:
        """Shard ``shard``'s scores of each query against its candidate rows."""
        out = self._scatter("score", (folder, queries, rows), f"rescoring on shard {shard}", only=shard)[shard]
        if out is None:  # left out (allow_partial): its candidates drop
            return np.full(np.asarray(rows).shape, -np.inf, np.float32)
        return out

    def health(self) -> list[dict]:
        """One entry per shard: ``ok`` when at least one replica answers, with each replica's state."""
        if not self.replicas:
            return [{**s.health(), "ok": True, "replicas": [{"ok": True}]} for s in self.shards]
        import ray

        out = []
        for i, rs in enumerate(self.replicas):
            states = []
            for r in rs:
                try:
                    states.append({"ok": True, **ray.get(r.health.remote(), timeout=min(10.0, self.timeout_s))})
                except Exception as exc:  # noqa: BLE001 - any failure is a down replica, reported as such
                    states.append({"ok": False, "error": type(exc).__name__})
            out.append({"shard": i, "name": self.index.shards[i]["name"],
                        "documents": self.index.shards[i]["num_docs"],
                        "ok": any(s["ok"] for s in states), "replicas": states})
        return out

    def close(self) -> None:
        if self.replicas:
            import ray

            for rs in self.replicas:
                for r in rs:
                    ray.kill(r)
            self.replicas = []
