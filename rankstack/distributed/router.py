"""Scatter a query batch to every shard, gather, merge exactly.

Shards are served in-process (``address=None``: every shard opened here) or by Ray actors, ``replicas`` per shard,
spread over the cluster's nodes. The router sends each shard the batch once (BM25 queries already analysed, dense
and sparse queries already encoded, so shard servers hold only arrays), merges the shards' top-k lists, and leaves fusion and
reranking to the pipeline, which runs once, after the merge.

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
from typing import Any, Sequence

import numpy as np

from rankstack.errors import RankStackError
from rankstack.index.sharded import Shard, ShardedIndex

logger = logging.getLogger(__name__)

__all__ = ["ShardRouter", "ShardUnavailable", "ShardServer"]


_LOCAL = {"bm25": "bm25_search", "dense": "dense_search", "sparse": "sparse_search"}


class ShardUnavailable(RankStackError):
    """A shard gave no answer after every retry."""


class ShardServer:
    """What a shard's Ray actor runs: one :class:`Shard`, opened from the shared folder."""

    def __init__(self, root: str, number: int):
        self.shard = Shard(root, number)

    def bm25(self, analysed, k, k1, b):
        return self.shard.bm25_search(analysed, k, k1, b)

    def dense(self, vectors, k, params):
        return self.shard.dense_search(vectors, k, params)

    def sparse(self, impacts, k):
        return self.shard.sparse_search(impacts, k)

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
    """``index``: the :class:`ShardedIndex`; ``address``: None (shards in this process) or a Ray address."""

    def __init__(self, index: ShardedIndex, *, address: str | None = None, replicas: int = 1,
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

    def _scatter(self, method: str, args: tuple, what: str) -> list[Any | None]:
        """Every shard's answer to ``method(*args)`` (None for a shard left out)."""
        if not hasattr(self._local, "failed"):
            self._local.failed = {}
        if not self.replicas:
            return [getattr(s, _LOCAL[method])(*args) for s in self.shards]
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            from ray.exceptions import ActorUnavailableError
        except ImportError:  # older Ray
            ActorUnavailableError = RayActorError  # noqa: N806

        refs = {i: self._submit(i, method, args) for i in range(len(self.replicas))}
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

    def _merge(self, answers: list, nq: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        from rankstack.index.sharded import merge_topk

        got = [a for a in answers if a is not None]
        return [merge_topk([a[q] for a in got], k) for q in range(nq)]

    def bm25(self, analysed: Sequence[Sequence[str]], k: int, k1: float, b: float):
        """Per query: the collection's top ``k`` (positions, raw Lucene scores) under collection-wide statistics."""
        analysed = [list(t) for t in analysed]
        return self._merge(self._scatter("bm25", (analysed, k, k1, b), f"{len(analysed)} BM25 queries"),
                           len(analysed), k)

    def dense(self, vectors: np.ndarray, k: int, params: dict | None = None):
        """Per query vector: the collection's top ``k`` (positions, inner products)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return self._merge(self._scatter("dense", (vectors, k, dict(params or {})), f"{len(vectors)} dense queries"),
                           len(vectors), k)

    def sparse(self, impacts, k: int):
        """Per query (int CSR impacts): the collection's top ``k`` (positions, integer impact scores)."""
        return self._merge(self._scatter("sparse", (impacts, k), f"{impacts.shape[0]} sparse queries"),
                           impacts.shape[0], k)

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
