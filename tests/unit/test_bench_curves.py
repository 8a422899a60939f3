from __future__ import annotations

import numpy as np
import pytest

from routenlp_ray.bench.curves import (
    OperatingPoint,
    area_under_curve,
    cost_at_quality,
    oracle_points,
    pareto_front,
    routed_point,
)
from routenlp_ray.bench.tasks_bench import TaskTable, aggregate, cascade_choice, policy_curves


def test_routed_point_averages_cost_quality_and_shares() -> None:
    quality = np.array([[0.0, 1.0], [1.0, 1.0]])
    cost = np.array([[1.0, 10.0], [1.0, 10.0]])
    point = routed_point(np.array([1, 0]), quality, cost, ["a", "b"])
    assert (point.cost, point.quality, point.shares) == (5.5, 1.0, {"a": 0.5, "b": 0.5})


def test_pareto_area_and_cost_at_quality() -> None:
    points = [OperatingPoint(1, 0.5), OperatingPoint(2, 0.4), OperatingPoint(3, 0.9), OperatingPoint(4, 0.9)]
    assert [(p.cost, p.quality) for p in pareto_front(points)] == [(1, 0.5), (3, 0.9)]
    # Budgets 0-1: nothing (0); 1-3: 0.5; 3-4: 0.9 -> (0 + 2 * 0.5 + 0.9) / 4.
    assert area_under_curve(points, max_cost=4) == pytest.approx(1.9 / 4)
    assert cost_at_quality(points, 0.9) == 3 and cost_at_quality(points, 0.95) is None


def test_oracle_dominates_every_single_tier() -> None:
    rng = np.random.default_rng(0)
    quality = rng.random((200, 3))
    cost = np.tile([1.0, 3.0, 9.0], (200, 1))
    oracle = oracle_points(quality, cost, ["a", "b", "c"])
    for k in range(3):
        single = routed_point(np.full(200, k), quality, cost, ["a", "b", "c"])
        assert cost_at_quality(oracle, single.quality) <= single.cost + 1e-12


def table(quality, uncertainty, cost=(1.0, 10.0)) -> TaskTable:
    quality = np.asarray(quality, dtype=float)
    n = len(quality)
    return TaskTable("t", [str(i) for i in range(n)], ["x"] * n, quality, (quality >= 1).astype(float),
                     np.tile(cost, (n, 1)), np.asarray(uncertainty, dtype=float), ["cheap", "frontier"])


def test_cascade_pays_for_every_tier_it_tries() -> None:
    tab = table([[1, 1], [0, 1]], [[0.1, np.nan], [2.0, np.nan]])
    answer, spent = cascade_choice(tab, np.zeros(2, dtype=int), delta=0.5)
    assert answer.tolist() == [0, 1] and spent.tolist() == [1.0, 11.0]
    answer, spent = cascade_choice(tab, np.array([1, 1]), delta=0.5)
    assert answer.tolist() == [1, 1] and spent.tolist() == [10.0, 10.0]


def test_a_cascade_with_informative_uncertainty_beats_random_at_equal_quality() -> None:
    rng = np.random.default_rng(1)
    n = 400
    cheap_right = rng.random(n) < 0.6
    quality = np.column_stack([cheap_right.astype(float), np.ones(n)])
    uncertainty = np.column_stack([np.where(cheap_right, rng.random(n), 1 + rng.random(n)), np.full(n, np.nan)])
    curves = policy_curves(table(quality, uncertainty), np.zeros((n, 2)), np.zeros(n), seed=0)
    target = 0.96
    assert cost_at_quality(curves["cascade"], target) < cost_at_quality(curves["random"], target)
    assert cost_at_quality(curves["oracle"], target) <= cost_at_quality(curves["cascade"], target)


def test_aggregate_weights_by_volume_and_falls_back_to_frontier() -> None:
    per_task = {
        "a": {"frontier": {"cost": 10.0, "quality": 1.0},
              "policies": {"p": {"meets_target": True, "cost_usd": 5.0, "retention": 0.98}}},
        "b": {"frontier": {"cost": 10.0, "quality": 1.0}, "policies": {"p": {"meets_target": False}}},
    }
    result = aggregate(per_task, {"a": 3, "b": 1})["p"]
    assert result["cost_reduction"] == pytest.approx(1 - (0.75 * 5 + 0.25 * 10) / 10)
    assert result["retention"] == pytest.approx(0.75 * 0.98 + 0.25)
