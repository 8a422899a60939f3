"""The pilot report's per-task attribution: where an arm's improvement over no loop comes from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routenlp_ray.bench.pilot_plan import DriftPlan
from routenlp_ray.bench.pilot_report import (
    bootstrap_improvement_ratio,
    pilot_markdown,
    ratio_ci_text,
    shortfall_phase,
    target_checks,
    task_attribution,
)
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


def _costs(targeted_gain: float, untargeted_gain: float, n: int = 400, seeds: int = 3, noise: float = 0.1):
    """Per-query held-out costs (one week) where the arms save the given shares of frontier cost on average."""
    rng = np.random.default_rng(0)
    costs, frontier = {}, {}
    for seed in range(seeds):
        front = np.ones(n)
        base = np.full(n, 0.8)
        costs[seed] = {"no_loop": base[:, None],
                       "targeted": (base - targeted_gain + rng.normal(0, noise, n))[:, None],
                       "untargeted": (base - untargeted_gain + rng.normal(0, noise, n))[:, None]}
        frontier[seed] = front
    return costs, frontier


def test_the_ratio_ci_is_read_over_every_draw() -> None:
    costs, frontier = _costs(0.04, 0.02, noise=0.05)
    r = bootstrap_improvement_ratio(costs, frontier, reps=400)
    assert r["ratio"] == pytest.approx(2.0, rel=0.25) and r["ratio_ci_rule"] == "all_draws"
    assert r["untargeted_at_most_zero_share"] == 0.0
    assert r["ratio_ci95"][0] < r["ratio"] < r["ratio_ci95"][1]
    # Untargeted gains nothing on average: no point ratio, and the draws where it gains nothing push the
    # interval's upper end to infinity (targeted gains in them) instead of being dropped.
    costs, frontier = _costs(0.04, 0.0)
    r = bootstrap_improvement_ratio(costs, frontier, reps=400)
    assert r["untargeted_at_most_zero_share"] > 0.3
    assert r["ratio_ci95"][1] == "inf" and 1 < r["ratio_ci95"][0] < float("inf")
    assert r["difference_ci95"][0] > 0
    # Neither arm gains: the draws that cannot favour targeting count at the low end.
    costs, frontier = _costs(-0.01, -0.01)
    r = bootstrap_improvement_ratio(costs, frontier, reps=400)
    assert r["ratio"] is None and r["ratio_ci95"][0] == "-inf"
    # Untargeted never gains and targeted always does: the whole interval is at +inf, not (-inf, inf).
    costs, frontier = _costs(0.04, -0.04, noise=0.05)
    r = bootstrap_improvement_ratio(costs, frontier, reps=400)
    assert r["ratio_ci95"] == ["inf", "inf"] and r["untargeted_at_most_zero_share"] == 1.0
    assert json.loads(json.dumps(r)) == r  # JSON as written, no Infinity literals


def test_a_ratio_ci_is_rendered_with_its_unbounded_ends_and_an_older_reports_rule() -> None:
    assert ratio_ci_text({"ratio_ci95": [1.5, "inf"], "ratio_ci_rule": "all_draws",
                          "untargeted_at_most_zero_share": 0.4}) == "[1.50, ∞) (untargeted ≤ 0 in 40% of draws)"
    assert ratio_ci_text({"ratio_ci95": ["-inf", "inf"], "ratio_ci_rule": "all_draws",
                          "untargeted_at_most_zero_share": 0.9}) == "(−∞, ∞) (untargeted ≤ 0 in 90% of draws)"
    assert ratio_ci_text({"ratio_ci95": ["inf", "inf"], "ratio_ci_rule": "all_draws",
                          "untargeted_at_most_zero_share": 1.0}) == "(∞, ∞) (untargeted ≤ 0 in 100% of draws)"
    assert ratio_ci_text({"ratio_ci95": [1.02, 3.59], "ratio_ci_rule": "all_draws",
                          "untargeted_at_most_zero_share": 0.0}) == "[1.02, 3.59]"
    # Before the rule, the percentiles were over the draws where untargeted gained: the report says so.
    assert ratio_ci_text({"ratio_ci95": [1.10, 34.0], "untargeted_at_most_zero_share": 0.274}) == (
        "[1.10, 34.00] (over the 72.6% of draws where untargeted gained)")


def test_a_resumed_pilot_says_how_long_its_weeks_took() -> None:
    report = json.loads((REPO_ROOT / "results" / "pilot.json").read_text())
    assert f"in {report['seconds'] / 60:.0f} min. Drift plan" in pilot_markdown(report, "cmd")
    resumed = {**report, "seconds": 12.0, "week_seconds": 1860.0}
    assert "in 0 min, resuming finished weeks (the weeks' serving and loop work took 31 min in all)" in (
        pilot_markdown(resumed, "cmd"))


def test_a_shortfall_is_placed_against_its_tasks_drift() -> None:
    plan = DriftPlan.model_validate({"name": "p", "tasks": ["intent", "risk", "steady"], "drifts": [
        {"task": "intent", "label_share": 0.3, "from_week": 2}, {"task": "risk", "whole_task": True, "from_week": 1}]})

    def phase(task: str, week: int, where: str) -> str:
        return shortfall_phase(plan, {"task": task, "week": week, "where": where})

    assert phase("steady", 3, "held_out") == "no_drift"
    # Traffic before the drift holds none of it; the held-out slice holds it from week 0.
    assert phase("intent", 1, "traffic") == "no_drift"
    assert phase("intent", 1, "held_out") == "drift_not_in_traffic"
    assert phase("intent", 2, "traffic") == "first_drift_week"
    assert phase("intent", 2, "held_out") == "first_drift_week"
    assert phase("intent", 3, "traffic") == "after_first_drift_week"
    assert phase("risk", 0, "held_out") == "drift_not_in_traffic"
    assert phase("risk", 1, "traffic") == "first_drift_week"


def test_the_quality_targets_section_counts_each_arms_shortfalls_by_phase() -> None:
    report = json.loads((REPO_ROOT / "results" / "pilot_blind_budget25.json").read_text())
    markdown = pilot_markdown(report, "cmd")
    section = markdown[markdown.index("## Quality targets"):]
    below = report["below_quality_target"]
    plan = DriftPlan.model_validate(report["plan"])
    for arm in ("no_loop", "targeted"):
        mine = [shortfall_phase(plan, b) for b in below if b["arm"] == arm]
        cells = [shortfall_phase(plan, {"task": t, "week": r["week"], "where": w}) for r in report["records"]
                 if r["arm"] == arm for w in ("traffic", "held_out") for t in r[w]["per_task"]]
        counts = " | ".join(f"{mine.count(p)} / {cells.count(p)}" for p in
                            ("no_drift", "drift_not_in_traffic", "first_drift_week", "after_first_drift_week"))
        assert f"| {arm} | {len(mine)} / {len(cells)} | {counts} |" in section
    # Every listed cell says where it sits; the list keeps every cell.
    assert sum(line.endswith("| the drift's first week |") for line in section.splitlines()) == sum(
        shortfall_phase(plan, b) == "first_drift_week" for b in below)
    assert sum("| held_out |" in line or "| traffic |" in line for line in section.splitlines()) == len(below)


def _ratio(ratio: float | None, low: float | str, high: float | str = "inf") -> dict:
    return {"final_week": {"ratio": ratio, "ratio_ci95": [low, high], "ratio_ci_rule": "all_draws",
                           "untargeted_at_most_zero_share": 0.0, "difference_ci95": [0.01, 0.03]}}


def _week(arm: str, week: int, reduction: float) -> dict:
    return {"arm": arm, "week": week, "held_out": {"cost_reduction": {"mean": reduction, "sd": 0.0, "n": 5}}}


def test_the_targets_are_read_off_the_report() -> None:
    plan = {"name": "p", "tasks": ["intent", "steady"], "drifts": [{"task": "intent", "label_share": 0.3,
                                                                      "from_week": 1}]}
    report = {
        "plan": plan,
        "ratios": {"targeted": _ratio(2.5, 1.4, 6.0)},
        "ratios_over_recalibration": {"targeted": _ratio(None, "-inf")},
        "weeks": [_week("no_loop", w, 0.1) for w in range(4)]
                 + [_week("targeted", w, r) for w, r in enumerate([0.10, 0.09, 0.12, 0.15])],
        "below_quality_target": [
            {"seed": 0, "arm": "no_loop", "week": 3, "where": "traffic", "task": "intent"},
            {"seed": 0, "arm": "targeted", "week": 1, "where": "held_out", "task": "intent"},
        ],
    }
    checks = {c["target"]: c for c in target_checks(report)}
    over_no_loop = checks["targeted ≥ 2× untargeted over no loop, final week, CI lower bound > 1"]
    assert over_no_loop["met"] is True
    assert checks["targeted ≥ 2× untargeted over recalibration only, final week, CI lower bound > 1"]["met"] is False
    retention = checks["retention at or above each task's quality target in every week, arm and seed"]
    assert retention["met"] is False
    assert "2 cells below; after the drift's first week: no_loop 1, targeted 0" in retention["evidence"]
    falls = checks["targeted's held-out cost falls week over week from week 1, the first with drift"]
    assert falls["met"] is True and falls["evidence"] == "cost reduction 9.0% → 12.0% → 15.0%"

    # A ratio of 2 or more whose CI reaches down to 1 does not meet the target; nor does a week that saved less.
    report["ratios"]["targeted"] = _ratio(3.0, 0.9)
    report["weeks"][-1] = _week("targeted", 3, 0.11)
    checks = {c["target"]: c for c in target_checks(report)}
    assert checks["targeted ≥ 2× untargeted over no loop, final week, CI lower bound > 1"]["met"] is False
    # Untargeted gained nothing and targeted did in every draw: no ratio to hold to 2×, so it cannot tell.
    report["ratios_over_recalibration"]["targeted"] = _ratio(None, "inf")
    checks = {c["target"]: c for c in target_checks(report)}
    assert checks["targeted ≥ 2× untargeted over recalibration only, final week, CI lower bound > 1"]["met"] is None
    falls = checks["targeted's held-out cost falls week over week from week 1, the first with drift"]
    assert falls["met"] is False and falls["evidence"].endswith("not lower than the week before in week 3")
