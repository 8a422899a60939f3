"""Quality–cost curves of routing policies, and the numbers read off them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class OperatingPoint:
    """One setting of a policy: its mean cost and quality per query, and where queries went."""

    cost: float
    quality: float
    setting: float | str | None = None
    shares: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def routed_point(
    choice: np.ndarray, quality: np.ndarray, cost: np.ndarray, names: Sequence[str], setting: float | str | None = None
) -> OperatingPoint:
    """The operating point of sending query i to model ``choice[i]``."""
    rows = np.arange(len(choice))
    counts = np.bincount(choice, minlength=len(names)) / max(len(choice), 1)
    return OperatingPoint(
        cost=float(cost[rows, choice].mean()),
        quality=float(np.nanmean(quality[rows, choice])),
        setting=setting,
        shares={name: float(share) for name, share in zip(names, counts) if share > 0},
    )


def pareto_front(points: Sequence[OperatingPoint]) -> list[OperatingPoint]:
    """Points not beaten on both cost and quality, cheapest first."""
    front: list[OperatingPoint] = []
    for point in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if not front or point.quality > front[-1].quality:
            front.append(point)
    return front


def area_under_curve(points: Sequence[OperatingPoint], max_cost: float) -> float:
    """Mean over budgets c in [0, max_cost] of the best quality reachable at cost <= c.

    Quality is expected in [0, 1]; so is the result. A budget below the cheapest point earns 0.
    """
    front = [p for p in pareto_front(points) if p.cost <= max_cost]
    if not front or max_cost <= 0:
        return 0.0
    area = 0.0
    for here, nxt in zip(front, [*front[1:], None]):
        right = nxt.cost if nxt is not None else max_cost
        area += here.quality * (right - here.cost)
    return float(area / max_cost)


def cost_at_quality(points: Sequence[OperatingPoint], quality: float) -> float | None:
    """The lowest cost among points reaching ``quality``; None when none does."""
    costs = [p.cost for p in points if p.quality >= quality - 1e-12]
    return min(costs) if costs else None


def best_point_at_quality(points: Sequence[OperatingPoint], quality: float) -> OperatingPoint | None:
    eligible = [p for p in points if p.quality >= quality - 1e-12]
    return min(eligible, key=lambda p: (p.cost, -p.quality)) if eligible else None


def oracle_points(
    quality: np.ndarray, cost: np.ndarray, names: Sequence[str], max_points: int | None = None
) -> list[OperatingPoint]:
    """The best any router could do with these answers: per query, argmax of quality - lambda * cost.

    The choice only changes at the prices ``lambda = (q_i - q_j) / (c_i - c_j)`` where two models of
    one query trade places, so evaluating just past every such price traces the oracle's exact
    quality-cost frontier. With ``max_points``, only that many quantiles of those prices are
    evaluated: a frontier a little below the exact one, never above it.
    """
    q = np.nan_to_num(quality, nan=-np.inf)
    dq = q[:, :, None] - q[:, None, :]
    dc = cost[:, :, None] - cost[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        prices = dq / dc
    breaks = np.unique(prices[np.isfinite(prices) & (prices > 0)])
    if max_points is not None and breaks.size > max_points:
        breaks = np.unique(np.quantile(breaks, np.linspace(0, 1, max_points)))
    lambdas = np.concatenate([[0.0], breaks * (1 + 1e-9), [breaks.max() * 2 if breaks.size else 1.0]])
    # Ties on quality go to the cheaper model: a vanishing cost term even at lambda = 0.
    tie_break = 1e-12 * cost / max(float(cost.max()), 1e-300)
    points = []
    for lam in lambdas:
        choice = np.argmax(q - lam * cost - tie_break, axis=1)
        points.append(routed_point(choice, quality, cost, names, float(lam)))
    return points
