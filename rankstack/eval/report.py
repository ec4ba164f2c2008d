"""Report tables comparing runs: metric means, extra columns (timings), and significance against a baseline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from rankstack.eval.metrics import EvalResult
from rankstack.eval.significance import PairedTest, compare_per_query

__all__ = ["Report", "build_report"]


@dataclass(frozen=True, kw_only=True)
class Report:
    dataset: str
    metrics: tuple[str, ...]
    rows: Mapping[str, Mapping[str, float]]                 # system -> metric -> mean
    baseline: str | None = None
    tests: Mapping[str, Mapping[str, PairedTest]] = field(default_factory=dict)  # system -> metric -> test
    extra: Mapping[str, Mapping[str, object]] = field(default_factory=dict)      # system -> column -> value
    details: Mapping[str, object] = field(default_factory=dict)                  # JSON only (specs, timings...)
    alpha: float = 0.05

    def to_markdown(self) -> str:
        extra_cols = sorted({c for v in self.extra.values() for c in v})
        head = ["system", *self.metrics, *extra_cols]
        lines = [f"{self.dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for system, vals in self.rows.items():
            cells = [system]
            for m in self.metrics:
                cell = f"{vals[m]:.4f}"
                t = self.tests.get(system, {}).get(m)
                if t is not None:
                    mark = "*" if t.p_randomization < self.alpha else ""
                    cell += f" ({t.delta:+.4f}, p={t.p_randomization:.3f}{mark})"
                cells.append(cell)
            for c in extra_cols:
                v = self.extra.get(system, {}).get(c, "")
                cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        if self.baseline and self.tests:
            lines += ["", f"(delta vs {self.baseline}, p from a paired randomization test with 10,000 trials; "
                          f"* marks p < {self.alpha}; paired t-test p-values are in the JSON report)"]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({
            "dataset": self.dataset,
            "metrics": list(self.metrics),
            "baseline": self.baseline,
            "rows": self.rows,
            "extra": self.extra,
            "tests": {s: {m: vars(t) for m, t in d.items()} for s, d in self.tests.items()},
            "details": self.details,
        }, indent=2, sort_keys=True, default=str)


def build_report(dataset: str, results: Mapping[str, EvalResult], *, baseline: str | None = None,
                 metrics: Sequence[str] | None = None, extra: Mapping[str, Mapping[str, object]] | None = None,
                 details: Mapping[str, object] | None = None, trials: int = 10_000) -> Report:
    """Tabulate ``results`` (system name -> EvalResult); with ``baseline``, test every other system against it."""
    first = next(iter(results.values()))
    metrics = tuple(metrics or first.aggregate.keys())
    rows = {s: {m: r.aggregate[m] for m in metrics} for s, r in results.items()}
    tests: dict[str, dict[str, PairedTest]] = {}
    if baseline is not None:
        if baseline not in results:
            raise ValueError(f"baseline {baseline!r} is not one of the systems {list(results)}")
        base = results[baseline]
        for s, r in results.items():
            common = set(base.per_query[metrics[0]]) & set(r.per_query[metrics[0]]) if metrics else set()
            if s != baseline and len(common) >= 2:  # (a partial run may share fewer queries: no test, no row)
                tests[s] = {m: compare_per_query(base.per_query[m], r.per_query[m], trials=trials) for m in metrics}
    return Report(dataset=dataset, metrics=metrics, rows=rows, baseline=baseline, tests=tests, extra=extra or {},
                  details=details or {})
