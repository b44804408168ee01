"""Summaries of samples (median, p95, max) and the units the page writes them in."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: every figure printed is a measured sample."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{n, median, p95, max, min, mean}`` of ``values``."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def sec(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None else f"{seconds:.{digits}f} s"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us"
