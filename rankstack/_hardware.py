"""What this machine's CPU can do, read once: the one place the library's ``auto`` choices look at the hardware.

``compute=auto`` (LLM rerankers) and ``backend=auto`` (dense encoders) both ask :func:`cpu_has_bf16_units`; the
evidence for each choice is in the README and ``benchmarks/RESULTS.md``. An environment variable named by the
caller (``RANKSTACK_COMPUTE``, ``RANKSTACK_ENCODER_BACKEND``) overrides an ``auto`` choice, e.g. so that a test
suite or a reproduction compares the same arithmetic on every machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from rankstack.errors import BadInput

__all__ = ["cpu_flags", "cpu_has_bf16_units", "forced_choice"]


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. on macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16); without them bf16 is emulated and
    slower than float32."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def forced_choice(env: str, allowed) -> str | None:
    """The value of the environment variable ``env`` when it is set (checked against ``allowed``), else None."""
    forced = os.environ.get(env)
    if not forced:
        return None
    if forced not in allowed:
        raise BadInput(f"{env}={forced!r}: set it to one of {', '.join(allowed)} or unset it")
    return forced
