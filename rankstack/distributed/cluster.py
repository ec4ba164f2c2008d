"""Connecting to Ray: ``local`` starts a one-machine Ray in this process; ``auto`` joins the cluster that
``ray start`` (or KubeRay) runs here; any other value is a cluster address (``HOST:PORT``, ``ray://HOST:10001``)."""

from __future__ import annotations

import logging
import os

from rankstack._optional import require
from rankstack.errors import BadInput

logger = logging.getLogger(__name__)

__all__ = ["connect", "ray_module"]


def ray_module():
    """``ray``, or a clear error naming the extra."""
    return require("ray")


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
    if address == "local":
        kw["num_cpus"] = num_cpus or os.cpu_count()
    else:
        kw["address"] = address
    try:
        ray.init(**kw)
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
