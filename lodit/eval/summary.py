"""Per-seed numbers -> mean and confidence interval: the statistics of the comparison report.

Confidence intervals are two-sided Student-t intervals over seeds, ``mean ± t(0.975, n-1)·s/√n``
(s the sample standard deviation); with one seed there is no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lodit.errors import LoditError

CI_LEVEL = 0.95


def t_interval(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float | None, float | None]:
    """Mean and the two-sided Student-t confidence interval of ``values`` (``None`` bounds for one value)."""
    from scipy import stats

    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise LoditError("a confidence interval needs at least one value")
    mean = float(data.mean())
    if data.size < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return mean, mean - half, mean + half


def aggregate(runs: Sequence[dict[str, Any]], level: float = CI_LEVEL) -> list[dict[str, Any]]:
    """Mean and CI over seeds per (arm, step, metric).

    ``runs``: ``{"arm", "seed", "step", "metrics": [MetricResult dicts]}``. A metric unavailable
    for every seed keeps its reason (``unavailable``); seeds where it is unavailable are left out
    of the mean and counted in ``n_seeds`` only when available.
    """
    groups: dict[tuple[str, int, str], list[tuple[int, dict[str, Any]]]] = {}
    for run in runs:
        for metric in run["metrics"]:
            groups.setdefault((run["arm"], int(run["step"]), metric["name"]), []).append((run["seed"], metric))
    rows = []
    for (arm, step, name), entries in groups.items():
        available = [(seed, m) for seed, m in entries if m.get("value") is not None]
        models = sorted({m.get("model", "") for _, m in entries})
        ns = sorted({int(m.get("n", 0)) for _, m in entries})
        row = {"arm": arm, "step": step, "metric": name, "model": "; ".join(models),
               "n": ns[0] if len(ns) == 1 else ns, "seeds": [seed for seed, _ in available],
               "values": [float(m["value"]) for _, m in available], "n_seeds": len(available),
               "ci_level": level, "mean": None, "ci_low": None, "ci_high": None, "unavailable": None}
        if available:
            row["mean"], row["ci_low"], row["ci_high"] = t_interval(row["values"], level)
        else:
            reasons = sorted({m.get("details", {}).get("unavailable", "not computed") for _, m in entries})
            row["unavailable"] = "; ".join(reasons)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["arm"], r["step"], r["metric"]))
