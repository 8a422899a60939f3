"""The bootstrap CI of a targeted/untargeted ratio of gains: one rule for every bench that reports one.

Every draw counts. A draw where untargeted gains nothing has no finite ratio: it counts as +inf when
targeted gains (ahead without bound) and -inf when it does not (the draw cannot favour targeting), which
keeps the interval's lower bound conservative. Dropping such draws, as earlier reports did, read the
interval over a chosen share of the bootstrap and made it look tighter than it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["RATIO_CI_RULE", "extended_ratio", "point_ratio", "ratio_ci_text", "ratio_interval", "ratio_is_informative"]

# Written into every report made under this rule; a report without it was made under an earlier one.
RATIO_CI_RULE = "all_draws"


def extended_ratio(targeted: float, untargeted: float) -> float:
    """t / u, defined on every draw (see the module's docstring)."""
    if untargeted > 0:
        return targeted / untargeted
    return np.inf if targeted > 0 else -np.inf


def point_ratio(targeted: float, untargeted: float) -> float | None:
    """The measured t / u, or None when untargeted gained nothing: two losses give a positive quotient that
    says nothing about targeting."""
    return float(targeted / untargeted) if untargeted > 0 else None


def _json_bound(value: float) -> float | str:
    """JSON has no infinity: an unbounded end is written "inf" or "-inf", which ``float()`` reads back."""
    return float(value) if np.isfinite(value) else ("inf" if value > 0 else "-inf")


def ratio_interval(ratios: Sequence[float]) -> list[float | str]:
    """The 95% percentile interval of every draw's extended ratio, its ends JSON-safe."""
    low, high = np.quantile(np.asarray(ratios, dtype=float), [0.025, 0.975], method="inverted_cdf")
    return [_json_bound(low), _json_bound(high)]


def ratio_is_informative(result: Mapping[str, Any]) -> bool:
    """Whether the ratio's point value means anything: its CI lies above 0 and is bounded. An unbounded upper
    end means untargeted gained nothing in at least 2.5% of draws, so its gain cannot be told from 0."""
    ci = result.get("ratio_ci95")
    if ci is None:
        return False
    low, high = float(ci[0]), float(ci[1])
    return low > 0 and np.isfinite(high)


def ratio_ci_text(result: Mapping[str, Any], older: Callable[[Mapping[str, Any]], str]) -> str:
    """A ratio's 95% CI with its unbounded ends, and how often untargeted gained nothing. ``older`` renders a
    report made before this rule (each bench had its own), so committed reports keep their meaning."""
    if result.get("ratio_ci_rule") != RATIO_CI_RULE:
        return older(result)
    low, high = (float(end) for end in result["ratio_ci95"])
    text = (f"[{low:.2f}" if np.isfinite(low) else "(−∞" if low < 0 else "(∞") + ", " + (
        f"{high:.2f}]" if np.isfinite(high) else "∞)")
    share = result.get("untargeted_at_most_zero_share", 0.0)
    return text + (f" (untargeted ≤ 0 in {share:.0%} of draws)" if share > 0 else "")
