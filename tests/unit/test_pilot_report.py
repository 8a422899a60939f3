"""The pilot report's per-task attribution: where an arm's improvement over no loop comes from."""

from __future__ import annotations

import json

import pytest

from routenlp_ray.bench.pilot_report import pilot_markdown, task_attribution
from tests.conftest import REPO_ROOT


def _record(seed: int, arm: str, week: int, costs: dict[str, float], retention: dict[str, float]) -> dict:
    frontier = {"a": 10.0, "b": 30.0}
    per_task = {t: {"cost_usd": c, "frontier_cost_usd": frontier[t], "quality_retention": retention[t]}
                for t, c in costs.items()}
    return {"seed": seed, "arm": arm, "week": week, "held_out": {"per_task": per_task}}


def test_each_task_gets_its_saving_as_a_share_of_all_frontier_cost_and_its_retention() -> None:
    records = [
        _record(0, "no_loop", 1, {"a": 8.0, "b": 30.0}, {"a": 0.90, "b": 1.0}),
        _record(0, "targeted", 1, {"a": 9.0, "b": 20.0}, {"a": 0.97, "b": 0.98}),
        _record(1, "no_loop", 1, {"a": 8.0, "b": 30.0}, {"a": 0.92, "b": 1.0}),
        _record(1, "targeted", 1, {"a": 10.0, "b": 22.0}, {"a": 0.99, "b": 0.96}),
        _record(1, "targeted", 0, {"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}),  # another week: not read
        _record(2, "targeted", 1, {"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}),  # no no-loop run: left out
    ]
    table = task_attribution(records, ["targeted"], week=1)
    # Task a cost more (it was accepting wrong answers under no loop); task b saved 10 and 8 of 40.
    assert table["a"]["targeted"]["saved_over_no_loop"]["mean"] == pytest.approx((-1 / 40 - 2 / 40) / 2)
    assert table["b"]["targeted"]["saved_over_no_loop"]["mean"] == pytest.approx((10 / 40 + 8 / 40) / 2)
    assert table["b"]["targeted"]["saved_over_no_loop"]["n"] == 2
    assert table["a"]["no_loop"]["quality_retention"]["mean"] == pytest.approx(0.91)
    assert table["a"]["targeted"]["quality_retention"]["mean"] == pytest.approx(0.98)
    assert table["a"]["no_loop"]["saved_over_no_loop"]["mean"] == 0.0


def test_on_the_committed_pilot_the_tasks_sum_to_the_arms_improvement() -> None:
    report = json.loads((REPO_ROOT / "results" / "pilot.json").read_text())
    final = max(r["week"] for r in report["records"])
    table = task_attribution(report["records"], ["targeted", "untargeted"], final)
    for arm in ("targeted", "untargeted"):
        summed = sum(e[arm]["saved_over_no_loop"]["mean"] for e in table.values())
        assert summed == pytest.approx(report["ratios"]["targeted"]["final_week"][f"{arm}_improvement"], abs=1e-9)
    markdown = pilot_markdown(report, "routenlp bench pilot (test)")
    assert f"Where week {final}'s improvement comes from" in markdown and "| legal_risk | +" in markdown
