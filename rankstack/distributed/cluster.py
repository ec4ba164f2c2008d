"""Connecting to Ray: ``local`` starts a one-machine Ray in this process; ``auto`` joins the cluster that
``ray start`` (or KubeRay) runs here; any other value is a cluster address (``HOST:PORT``, ``ray://HOST:10001``)."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import types

from rankstack._optional import require
from rankstack.errors import BadInput

logger = logging.getLogger(__name__)

__all__ = ["connect", "init", "ray_module"]


def ray_module():
    """``ray``, or a clear error naming the extra."""
    return require("ray")


def init(**kw):
    """``ray.init`` that leaves a running JVM's SIGSEGV handler alone.

    A JVM in this process (Pyserini) takes SIGSEGV on purpose (implicit null checks, safepoint polls) and expects its
    own handler to get it. ``ray.init`` installs two handlers over it: its core worker's failure-signal handler, and
    Python's ``faulthandler`` when that is off; behind either the process dies on the JVM's next such trap (a Lucene
    index build after ``ray.init`` did, exit 139). Ray reads its switch from ``ray._private.ray_constants`` when it
    starts the core worker, and enables ``faulthandler`` only when ``faulthandler.is_enabled()`` says it is off."""
    ray = ray_module()
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] not in ("0", "")
    shim = "jnius" in sys.modules and not faulthandler.is_enabled()  # jnius starts its JVM when imported
    if shim:
        ray_worker.faulthandler = types.SimpleNamespace(is_enabled=lambda: True, enable=lambda **_: None)
    try:
        return ray.init(**kw)
    finally:
        if shim:
            ray_worker.faulthandler = faulthandler


def connect(address: str | None, *, num_cpus: int | None = None):
    """Initialise Ray once per process (an existing connection is reused) and return the ``ray`` module."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    if not address:
        raise BadInput("give a Ray address: local (start Ray on this machine), auto (the cluster `ray start` runs "
                       "here) or HOST:PORT / ray://HOST:10001")
    # rankstack must import in every worker; a checkout that is not installed travels with the job
    kw: dict = {"logging_level": logging.WARNING, "include_dashboard": False}
    kw["address"] = address  # "local": always a new cluster here, even when `ray start` left one recorded
    if address == "local":
        kw["num_cpus"] = num_cpus or os.cpu_count()
    try:
        init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BadInput(f"could not reach a Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                       f"or pass --ray-address local") from None
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = True
        ctx.print_on_execution_start = False
    except (ImportError, AttributeError):
        pass
    logger.info("connected to Ray at %s: %s", address, ray.cluster_resources())
    return ray
