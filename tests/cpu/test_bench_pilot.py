"""`routenlp bench pilot` on a tiny plan: real router, real Ray Train refits, the loop's own Iteration.

One seed, three weeks of a few dozen queries: a third of cs_intent's intents are new from week 1,
and legal_risk, which no cheap tier serves at week 0, arrives in week 1. The loop after week 1
must give legal_risk its first specialist head, and what it publishes must serve week 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.bench.pilot import PilotSettings, run_pilot
from routenlp_ray.bench.pilot_plan import DriftPlan
from routenlp_ray.bench.pilot_report import pilot_markdown, plot_pilot
from routenlp_ray.config import load_config
from routenlp_ray.specialists import read_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pilot(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pilot")
    plan = DriftPlan.model_validate({"name": "tiny", "tasks": ["cs_intent", "legal_risk"], "drifts": [
        {"task": "cs_intent", "label_share": 0.3, "from_week": 1},
        {"task": "legal_risk", "whole_task": True, "from_week": 1}]})
    settings = PilotSettings(weeks=3, queries_per_week=80, seeds=[0], base_per_task=150, calibration_per_task=60,
                             eval_per_task=40, budget_examples=40, n_clusters=4, bootstrap=100)
    config = load_config(REPO / "serve_config.local.yaml").with_absolute_paths(str(REPO))
    report = run_pilot(config, plan, data_dir, tmp / "work", settings, log=lambda line: None)
    return {"report": report, "work": tmp / "work", "tmp": tmp}


def _record(report: dict[str, Any], arm: str, week: int) -> dict[str, Any]:
    return next(r for r in report["records"] if r["arm"] == arm and r["week"] == week)


def test_every_week_of_every_arm_served_all_its_queries(pilot: dict[str, Any]) -> None:
    report = pilot["report"]
    assert len(report["records"]) == 4 * 3  # no loop, recalibration only, untargeted, targeted; 3 weeks
    for record in report["records"]:
        assert record["traffic"]["queries"] == 80  # a query no tier answered would have raised
        assert set(record["held_out"]["per_task"]) == {"cs_intent", "legal_risk"}
    # Week 0 has no legal_risk traffic and no cheap tier for it; the no-loop arm never changes.
    assert set(_record(report, "no_loop", 0)["traffic"]["per_task"]) == {"cs_intent"}
    assert {_record(report, "no_loop", w)["release"] for w in range(3)} == {"week-00"}
    assert _record(report, "targeted", 0)["specialist_tasks"] == ["cs_intent"]


def test_the_loop_gives_a_new_task_its_first_head_and_the_next_week_serves_it(pilot: dict[str, Any]) -> None:
    report = pilot["report"]
    loop = _record(report, "targeted", 1)["loop"]
    assert loop["outcome"] == "published", loop
    assert "legal_risk" in loop["tasks"] and loop["refitted"]["legal_risk"]["base_pairs"] == 0
    week2 = _record(report, "targeted", 2)
    assert week2["release"] == loop["published"] and "legal_risk" in week2["specialist_tasks"]
    artifact = pilot["work"] / "seed-0" / "targeted" / "releases" / loop["published"] / "adapters" / "specialist"
    assert "legal_risk" in read_manifest(artifact).tasks
    assert week2["held_out"]["per_task"]["legal_risk"]["specialist_share"] > 0


def test_recalibration_only_refits_the_thresholds_and_keeps_the_specialist(pilot: dict[str, Any]) -> None:
    from routenlp_ray.releases import ReleaseStore

    report = pilot["report"]
    store = ReleaseStore(pilot["work"] / "seed-0" / "recalibrate_only" / "releases")
    assert sorted(store.versions()) == ["recalibrated-week-00", "recalibrated-week-01", "week-00"]
    for week in (1, 2):
        record = _record(report, "recalibrate_only", week)
        assert record["release"] == f"recalibrated-week-{week - 1:02d}"
        assert record["specialist_tasks"] == ["cs_intent"]  # nothing distilled: legal_risk never gets a head
    # The same specialist files in every release, under thresholds refitted on that week's calibration rows.
    heads = [sorted(p.name for p in store.get(v).adapter_for("specialist").rglob("*")) for v in store.versions()]
    assert heads[0] == heads[1] == heads[2]
    week1 = json.loads(store.get("recalibrated-week-01").thresholds_path.read_text())
    assert "pilot-recalibrated-week-01" in json.dumps(week1)
    assert _record(report, "recalibrate_only", 1)["loop"] == {"outcome": "recalibrated",
                                                                "published": "recalibrated-week-01"}
    assert {"final_week", "summed_over_weeks"} <= set(report["ratios_over_recalibration"]["targeted"])


def test_the_report_is_written_with_its_ratio_and_plot(pilot: dict[str, Any]) -> None:
    report = pilot["report"]
    assert {"final_week", "summed_over_weeks", "traffic_summed_over_weeks"} <= set(report["ratios"]["targeted"])
    json.dumps(report)  # the per-query costs were dropped, the rest is plain JSON
    markdown = pilot_markdown(report, "routenlp bench pilot (test)")
    assert "| 2 | targeted |" in markdown and "targeted vs untargeted, over no loop" in markdown
    assert "targeted vs untargeted, over recalibration only" in markdown and "recalibrate_only: saved" in markdown
    # Each target is read off the run: the ratio over both baselines, retention, and the weekly cost from week 1.
    assert "## Against the targets" in markdown
    assert "| targeted's held-out cost falls week over week from week 1, the first with drift |" in markdown
    assert markdown.count("| targeted ≥ 2× untargeted over ") == 2
    plot_pilot(report, pilot["tmp"] / "pilot.png")
    assert (pilot["tmp"] / "pilot.png").stat().st_size > 0


def test_audited_calibration_rows_gate_on_traffic_the_pilot_never_served(pilot: dict[str, Any], data_dir: Path
                                                                         ) -> None:
    """The same seed with the loop calibrating on audited traffic (recalibration only, to keep it short): the
    week-0 release is the fixed run's, and each week's thresholds are refitted on a split of audited rows that
    no week served."""
    import shutil

    from routenlp_ray.bench.pilot import plan_seed, read_rows

    work = pilot["tmp"] / "audited"
    for name in ("base-specialist", "base-thresholds.json"):  # the week-0 release does not depend on the setting
        source = pilot["work"] / "seed-0" / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / "seed-0" / name)
    plan = DriftPlan.model_validate(pilot["report"]["plan"])
    settings = PilotSettings.model_validate({**pilot["report"]["settings"], "arms": ["recalibrate_only"],
                                             "calibration_rows": "audited", "audited_per_task": 25})
    config = load_config(REPO / "serve_config.local.yaml").with_absolute_paths(str(REPO))
    report = run_pilot(config, plan, data_dir, work, settings, log=lambda line: None)
    assert report["seeds_meta"]["0"]["audited_rows_per_week"][1] == {"cs_intent": 25, "legal_risk": 25}
    fixed_weeks = [_record(pilot["report"], "no_loop", w)["traffic"] for w in range(3)]
    assert [_record(report, "recalibrate_only", w)["traffic"]["queries"] for w in range(3)] == \
           [w["queries"] for w in fixed_weeks]
    split = work / "seed-0" / "data" / "cs_intent" / "calibration-audited-w1.jsonl"
    window = [json.loads(line)["id"] for line in split.read_text().splitlines()]
    assert len(window) == 60  # calibration_per_task: 25 audits of week 1, then 25 of week 0, then 10 slice rows
    fixed_split = pilot["work"] / "seed-0" / "data" / "cs_intent" / "calibration-w1.jsonl"
    slice_ids = [json.loads(line)["id"] for line in fixed_split.read_text().splitlines()]
    assert window[50:] == slice_ids[:10] and not set(window[:50]) & set(slice_ids)
    rows = {t: read_rows(data_dir, t, "train") for t in plan.tasks}
    served = {r.id for week in plan_seed(plan, rows, 0, settings).weeks for r in week}
    assert set(window) <= {r.id for r in rows["cs_intent"]} and not set(window) & served
    store_thresholds = work / "seed-0" / "recalibrate_only" / "releases" / "recalibrated-week-01" / "thresholds.json"
    assert "pilot-recalibrated-week-01" in store_thresholds.read_text()
    assert "Loop calibration rows: audited traffic, 25 rows per task a week" in pilot_markdown(report, "test")


def test_a_finished_run_is_reread_release_by_release_on_another_slice(pilot: dict[str, Any], data_dir: Path
                                                                      ) -> None:
    """``--reread``: each week's own release (not the arm's last) is read again. With the cached held-out files
    gone, the run's slice gives back the run's figures; another slice gives other figures, and the traffic and
    loop outcomes stay the run's."""
    from routenlp_ray.bench.pilot import reread_pilot

    report, work = pilot["report"], pilot["work"]
    plan = DriftPlan.model_validate(report["plan"])
    settings = PilotSettings.model_validate(report["settings"])
    config = load_config(REPO / "serve_config.local.yaml").with_absolute_paths(str(REPO))
    for cached in (work / "seed-0").glob("*/releases/*/pilot-held-out-*.json"):
        cached.unlink()
    again = reread_pilot(config, plan, data_dir, work, settings, log=lambda line: None)
    assert again["eval_slice"]["reread_from"] == str(work)
    for arm, week in (("targeted", 0), ("targeted", 2), ("recalibrate_only", 1), ("no_loop", 2)):
        assert _record(again, arm, week)["held_out"] == _record(report, arm, week)["held_out"]
    assert _record(report, "targeted", 0)["held_out"] != _record(report, "targeted", 2)["held_out"]

    other = reread_pilot(config, plan, data_dir, work, settings.model_copy(update={"eval_skip": 40}),
                         log=lambda line: None)
    assert other["eval_slice"]["key"] != report["eval_slice"]["key"]
    for original in report["records"]:
        moved = _record(other, original["arm"], original["week"])
        assert moved["traffic"] == original["traffic"] and moved["loop"] == original["loop"]
        assert moved["release"] == original["release"]
    assert _record(other, "targeted", 2)["held_out"] != _record(report, "targeted", 2)["held_out"]
    assert "A re-read (`--reread`)" in pilot_markdown(other, "test")
    with pytest.raises(ConfigError, match="finished weeks, not 4"):
        reread_pilot(config, plan, data_dir, work, settings.model_copy(update={"weeks": 4}), log=lambda line: None)
