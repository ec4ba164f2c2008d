"""Markdown tables for the benchmark scripts (run as ``python benchmarks/<name>.py``, so this imports as ``_table``)."""

from __future__ import annotations

from typing import Mapping, Sequence


def fmt(v, *, small: float = 2.0) -> str:
    """``None`` as ``-``; floats below ``small`` with 4 decimals (metrics, ratios), larger ones with 1."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < small else f"{v:.1f}"
    return str(v)


def markdown(rows: Sequence[Mapping], cols: Sequence[str], *, small: float = 2.0) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c), small=small) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def save_results(out_dir, payload) -> None:
    """Write ``payload`` as ``<out_dir>/results.json`` when ``--out`` was given."""
    import json
    from pathlib import Path

    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "results.json").write_text(json.dumps(payload, indent=1))


def p50_ms(call, n: int) -> float:
    """The median wall time, in ms, of ``call(j)`` for ``j`` in ``range(n)``."""
    import time

    import numpy as np

    times = []
    for j in range(n):
        t0 = time.perf_counter()
        call(j)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50))
