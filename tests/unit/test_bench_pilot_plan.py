"""The pilot's drift plan and how a seed's data is cut into week-0 rows, calibration rows and weekly traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.bench.pilot import PilotSettings, Row, calibration_rows_through, calibration_split, plan_seed
from routenlp_ray.bench.pilot_plan import DEFAULT_PLAN, NO_DRIFT_PLAN, DriftPlan, load_plan

LABELS = [f"intent_{i}" for i in range(9)]


def rows() -> dict[str, list[Row]]:
    intents = [Row(f"i{n}", "cs_intent", f"query {n}", LABELS[n % 9], {}) for n in range(900)]
    risk = [Row(f"r{n}", "legal_risk", f"clause {n}", "fair" if n % 4 else "unfair", {}) for n in range(400)]
    return {"cs_intent": intents, "legal_risk": risk}


def plan() -> DriftPlan:
    return DriftPlan.model_validate({"name": "t", "tasks": ["cs_intent", "legal_risk"], "drifts": [
        {"task": "cs_intent", "label_share": 0.33, "from_week": 1},
        {"task": "legal_risk", "whole_task": True, "from_week": 2}]})


def test_the_shipped_plans_load() -> None:
    assert load_plan(DEFAULT_PLAN).drifts and load_plan(NO_DRIFT_PLAN).drifts == []


@pytest.mark.parametrize("drift, message", [
    ({"task": "cs_intent", "from_week": 1}, "exactly one of labels, label_share or whole_task"),
    ({"task": "cs_intent", "label_share": 0.2, "whole_task": True, "from_week": 1}, "exactly one of"),
    ({"task": "fin_ner", "whole_task": True, "from_week": 1}, "task 'fin_ner', which is not in tasks"),
])
def test_a_bad_plan_fails_naming_the_field(tmp_path: Path, drift: dict, message: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(f"name: bad\ntasks: [cs_intent]\ndrifts: [{drift!r}]\n".replace("True", "true"))
    with pytest.raises(ConfigError, match=message):
        load_plan(path)


def test_a_plan_is_checked_against_the_data_it_runs_on() -> None:
    named = DriftPlan.model_validate({"name": "n", "tasks": ["cs_intent"],
                                      "drifts": [{"task": "cs_intent", "labels": ["nope"], "from_week": 1}]})
    with pytest.raises(ConfigError, match=r"labels \['nope'\] are not labels of cs_intent's train split"):
        named.check({"cs_intent": "label"}, {"cs_intent": set(LABELS)})
    entities = DriftPlan.model_validate({"name": "e", "tasks": ["fin_ner"],
                                         "drifts": [{"task": "fin_ner", "label_share": 0.5, "from_week": 1}]})
    with pytest.raises(ConfigError, match="new labels need a label task"):
        entities.check({"fin_ner": "entities"}, {"fin_ner": set()})
    with pytest.raises(ConfigError, match=r"tasks \['cs_intent'\] are not tasks of the config"):
        named.check({}, {})


def test_new_labels_are_a_share_drawn_per_seed() -> None:
    p = plan()
    first, again, other = (p.new_labels("cs_intent", LABELS, s) for s in (0, 0, 1))
    assert first == again and len(first) == 3 and first <= set(LABELS)
    assert any(p.new_labels("cs_intent", LABELS, s) != first for s in range(1, 6))
    assert p.new_labels("legal_risk", ["fair"], 0) == set()


def test_week_zero_never_sees_the_drift_and_later_weeks_do() -> None:
    p, settings = plan(), PilotSettings(weeks=4, queries_per_week=100, calibration_per_task=50, base_per_task=200)
    seed = plan_seed(p, rows(), 0, settings)
    new = seed.new_labels["cs_intent"]
    assert seed.base["legal_risk"] == [] and not any(r.label in new for r in seed.base["cs_intent"])
    assert len(seed.base["cs_intent"]) == 200
    used = {r.id for r in seed.base["cs_intent"]} | {r.id for r in seed.calibration["cs_intent"]}
    for week, batch in enumerate(seed.weeks):
        assert len(batch) == 100
        intents = [r for r in batch if r.task == "cs_intent"]
        assert not {r.id for r in intents} & used  # traffic is new to the week-0 specialist
        assert any(r.label in new for r in intents) == (week >= 1)
        assert any(r.task == "legal_risk" for r in batch) == (week >= 2)
    # The same seed cuts the same data: every arm of a seed sees the same queries.
    assert [r.id for r in plan_seed(p, rows(), 0, settings).weeks[3]] == [r.id for r in seed.weeks[3]]
    seen = calibration_rows_through(p, seed, 0)
    assert seen["legal_risk"] == [] and not any(r.label in new for r in seen["cs_intent"])
    assert {r.label for r in calibration_rows_through(p, seed, 2)["cs_intent"]} & new


def test_audited_calibration_rows_follow_traffic_and_are_never_served() -> None:
    p = plan()
    common = dict(weeks=4, queries_per_week=100, calibration_per_task=50, base_per_task=200)
    fixed = plan_seed(p, rows(), 0, PilotSettings(**common))
    seed = plan_seed(p, rows(), 0, PilotSettings(**common, calibration_rows="audited", audited_per_task=20))
    # The served weeks do not depend on the setting: the two compare query by query.
    assert [[r.id for r in w] for w in seed.weeks] == [[r.id for r in w] for w in fixed.weeks]
    assert fixed.audits == [] and calibration_rows_through(p, fixed, 3) == calibration_rows_through(p, fixed, 3, False)
    served = {r.id for w in seed.weeks for r in w}
    known = {r.id for rows_ in (*seed.base.values(), *seed.calibration.values()) for r in rows_}
    new = seed.new_labels["cs_intent"]
    audited = [r.id for week in seed.audits for rows_ in week.values() for r in rows_]
    assert len(audited) == len(set(audited)) and not set(audited) & (served | known)
    for week, by_task in enumerate(seed.audits):
        assert len(by_task["cs_intent"]) == 20
        assert any(r.label in new for r in by_task["cs_intent"]) == (week >= 1)  # the week's stream, drift and all
        assert ("legal_risk" in by_task) == (week >= 2)
    window = calibration_rows_through(p, seed, 3)["cs_intent"]
    newest_first = [r.id for w in (3, 2, 1) for r in seed.audits[w]["cs_intent"]][:50]
    assert len(window) == 50 and [r.id for r in window] == newest_first
    early = calibration_rows_through(p, seed, 0)["cs_intent"]  # 20 audits, the slice filling the other 30
    slice_rows = calibration_rows_through(p, seed, 0, audits=False)["cs_intent"]
    assert [r.id for r in early] == [r.id for r in seed.audits[0]["cs_intent"] + slice_rows[:30]]
    assert calibration_split(0, False) != calibration_split(0, True)


def test_audits_stop_where_a_small_pool_runs_out() -> None:
    small = {"cs_intent": rows()["cs_intent"][:500], "legal_risk": rows()["legal_risk"]}
    settings = PilotSettings(weeks=4, queries_per_week=100, calibration_per_task=50, base_per_task=50,
                             calibration_rows="audited", audited_per_task=40)
    seed = plan_seed(plan(), small, 0, settings)
    counts = [len(w["cs_intent"]) for w in seed.audits]
    assert counts[1] == 40 and counts[-1] == 0  # only the pool's unserved rows can be audited, each once
