"""Live recalibration acts on evidence only: the rules of ``monitoring.monitor`` and ``monitoring.evidence``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.config.monitoring import MonitoringConfig
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.conformal.calibrator import ConformalCalibrator, wilson_interval
from routenlp_ray.conformal.rows import CalibrationRow, load_calibration_rows, save_calibration_rows
from routenlp_ray.monitoring.evidence import BreachTest, log_mixture_e_value
from routenlp_ray.monitoring.monitor import CoverageMonitor, LabelledAnswer

BUDGET = 0.04  # legal_risk's quality budget: 1 - quality_target
THRESHOLD = 0.17


def audit(u: float, correct: bool, ts: float, task: str = "legal_risk") -> LabelledAnswer:
    return LabelledAnswer("specialist", task, u, correct, "audit", ts)


def shipped_rows(n: int, seed: int = 0, task: str = "legal_risk") -> list[CalibrationRow]:
    """A tier as shipped: sure answers under the threshold, wrong on 2% of them; unsure ones wrong half the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sure = rng.random() < 0.8
        u = float(rng.uniform(0, THRESHOLD) if sure else rng.uniform(THRESHOLD, 1.0))
        rows.append(CalibrationRow("specialist", task, u, bool(rng.random() > (0.02 if sure else 0.5)), f"r{i}"))
    return rows


def quality_monitor(rows: list[CalibrationRow] | None = None, **settings: object) -> CoverageMonitor:
    config = MonitoringConfig(method="quality", **settings)
    table = ThresholdTable(version="shipped", thresholds={"specialist": {"legal_risk": THRESHOLD}})
    return CoverageMonitor(config, alpha=0.1, thresholds=table, now=0.0, quality_budgets={"legal_risk": BUDGET},
                           calibration_rows=rows or [])


def test_the_e_value_is_one_without_evidence_and_grows_with_failures_beyond_the_limit() -> None:
    assert log_mixture_e_value(0, 0, 0.04) == 0.0
    assert log_mixture_e_value(0, 200, 0.04) < 0 < log_mixture_e_value(20, 200, 0.04) < log_mixture_e_value(40, 200, 0.04)
    assert np.allclose(log_mixture_e_value([0, 20], [200, 200], 0.04),
                       [log_mixture_e_value(0, 200, 0.04), log_mixture_e_value(20, 200, 0.04)])
    with pytest.raises(ValueError, match="limit must be in"):
        log_mixture_e_value(1, 10, 0.0)
    test = BreachTest("accepted-and-wrong share", 0.04, 300, 30, level=0.01, min_n=100)
    assert test.breached and test.evidence()["log10_e_value"] > test.evidence()["alarm_log10_e_value"] == 2.0
    assert not BreachTest("x", 0.04, 60, 60, level=0.01, min_n=100).breached  # too few audits, however bad


def test_checking_after_every_audit_keeps_false_alarms_within_the_stated_confidence() -> None:
    # A tier exactly at its budget, re-tested after every one of 1,000 audits (the old monitor's
    # habit): the anytime-valid test alarms on at most 1 - confidence of such streams.
    rng = np.random.default_rng(1)
    streams, alarms, wilson_alarms = 1000, 0, 0
    ns = np.arange(1, 1001)
    for stream in range(streams):
        failures = np.cumsum(rng.random(1000) < BUDGET)
        looked = ns >= 100
        alarms += bool(np.any(log_mixture_e_value(failures[looked], ns[looked], BUDGET) >= math.log(100)))
        if stream < 100:  # the old rule, on fewer streams: its interval is slow to compute
            wilson_alarms += any(wilson_interval(int(f), int(n))[0] > BUDGET
                                 for f, n in zip(failures[29::10], ns[29::10]))
    assert alarms / streams <= 0.01
    assert wilson_alarms / 100 > 0.1  # the old rule: a repeated fixed-sample test fires by chance


def test_four_wrong_in_38_audits_no_longer_switches_the_specialist_off() -> None:
    # The collapse seen live: 4 of 38 audited legal_risk answers accepted and wrong fired the old
    # rule (Wilson lower bound above the 4% budget, 30 audits needed), whose refit on the ~60 rows
    # at hand could certify nothing, so the specialist lost its threshold.
    monitor = quality_monitor(shipped_rows(1398))
    answers = [audit(0.05, i % 9 != 4 or i >= 36, ts=1 + i) for i in range(38)]
    for a in answers:
        monitor.observe(a)
    lost = sum(not a.correct for a in answers)
    assert lost == 4 and wilson_interval(lost, len(answers))[0] > BUDGET  # the old trigger fired here
    old_refit = ConformalCalibrator(method="quality", epsilon=BUDGET, delta=0.1).conformalize(
        [a.uncertainty for a in answers], [a.correct for a in answers], ["specialist"] * 38, ["legal_risk"] * 38)
    assert old_refit.thresholds_["specialist"]["legal_risk"] is None  # and its refit removed the threshold
    assert monitor.due(now=100) is None
    cell = monitor.coverage("specialist", "legal_risk")
    assert cell.breach is not None and not cell.breach["breached"] and cell.breach["n"] == 38
    # A scheduled refit now rests on 2,000 rows (38 live, the rest shipped) and keeps the tier in use.
    result = monitor.recalibrate("schedule", "v1", now=200)
    [change] = result.changes
    assert (change["n_live"], change["n_shipped"], change["n"]) == (38, 1398, 1436)
    assert change["after"] is not None and change["action"] in ("unchanged", "tightened", "loosened")


def test_an_uncertifiable_refit_keeps_the_threshold_raises_audits_and_retries_on_new_evidence() -> None:
    # No shipped rows and a short window: the quality rule cannot certify 40 audits, so the
    # threshold in force stays, and the task is audited more until a refit certifies one.
    monitor = quality_monitor(min_labelled=50, boosted_audit_rate=0.4)
    for i in range(40):
        monitor.observe(audit(0.05, i % 20 != 0, ts=1 + i))
    result = monitor.recalibrate("schedule", "v1", now=100)
    [change] = result.changes
    assert change["action"] == "kept_uncertified" and change["after"] == THRESHOLD and change["n"] == 40
    assert not result.published and monitor.thresholds.version == "shipped"
    assert monitor.audit_rates() == {"legal_risk": 0.4} and monitor.short_of_evidence() == [("specialist", "legal_risk")]
    assert monitor.coverage("specialist", "legal_risk").short_of_evidence
    assert monitor.due(now=101) is None  # not before min_labelled more audits
    rng = np.random.default_rng(0)
    for i in range(400):  # plenty of right, sure answers
        monitor.observe(audit(float(rng.uniform(0, 0.3)), True, ts=200 + i))
    assert monitor.due(now=700) == "evidence:specialist/legal_risk"
    result = monitor.recalibrate("evidence:specialist/legal_risk", "v2", now=700)
    assert result.changes[0]["action"] in ("loosened", "tightened", "unchanged") and result.changes[0]["after"]
    assert monitor.audit_rates() == {} and monitor.short_of_evidence() == []


def test_a_real_fault_is_shown_and_the_threshold_tightened_past_the_wrong_answers() -> None:
    monitor = quality_monitor(shipped_rows(1398))
    rng = np.random.default_rng(2)
    for i in range(300):  # healthy traffic: about 1.6% of queries accepted and wrong
        u = float(rng.uniform(0, 1))
        monitor.observe(audit(u, not (u <= THRESHOLD and rng.random() < 0.1), ts=1 + i))
    assert monitor.due(now=400) is None
    for i in range(99):  # the fault: every answer is wrong, and sure of itself
        monitor.observe(audit(0.01, False, ts=400 + i))
    reason = monitor.due(now=600)
    assert reason == "quality_breach:specialist/legal_risk"
    result = monitor.recalibrate(reason, "v1", now=600)
    [change] = result.changes
    assert change["n_shipped"] == 0 and change["n_live"] == 399  # the shipped rows no longer describe the tier
    assert change["breach_test"]["breached"] and change["breach_test"]["failures"] >= 99
    # Certified on the live rows alone, the new threshold accepts none of the faulty answers.
    assert change["action"] == "tightened" and change["after"] < 0.01 and result.published


def test_a_tier_wrong_on_everything_loses_its_threshold_and_is_audited_more() -> None:
    monitor = quality_monitor(shipped_rows(1398))
    rng = np.random.default_rng(4)
    for i in range(120):
        monitor.observe(audit(float(rng.uniform(0, THRESHOLD)), False, ts=1 + i))
    reason = monitor.due(now=200)
    assert reason == "quality_breach:specialist/legal_risk"
    result = monitor.recalibrate(reason, "v1", now=200)
    [change] = result.changes
    assert change["action"] == "disabled" and change["after"] is None and change["before"] == THRESHOLD
    assert result.published and monitor.thresholds.get("specialist", "legal_risk") is None
    assert monitor.audit_rates() == {"legal_risk": 0.3} and monitor.due(now=201) is None


def test_a_breach_under_the_quality_rule_only_tightens() -> None:
    monitor = quality_monitor(min_labelled=100)
    rng = np.random.default_rng(3)
    for i in range(1500):  # wrong answers pile up near the threshold: the looser half of it is now bad
        u = float(rng.uniform(0, 0.3))
        monitor.observe(audit(u, not (0.1 < u <= THRESHOLD and rng.random() < 0.6), ts=1 + i))
    reason = monitor.due(now=2000)
    assert reason == "quality_breach:specialist/legal_risk"
    [change] = monitor.recalibrate(reason, "v1", now=2000).changes
    assert change["action"] == "tightened" and 0 < change["after"] < THRESHOLD


def test_calibration_rows_round_trip_and_a_bad_line_names_itself(tmp_path: Path) -> None:
    rows = [CalibrationRow("specialist", "cs_intent", 0.12, True, "a"), CalibrationRow("specialist", "cs_intent", None, False)]
    path = save_calibration_rows(tmp_path / "rows.jsonl", rows)
    assert load_calibration_rows(path) == rows
    path.write_text(path.read_text() + '{"tier": "specialist"}\n')
    with pytest.raises(ArtifactError, match="line 3 is invalid"):
        load_calibration_rows(path)
    with pytest.raises(ArtifactError, match="not found"):
        load_calibration_rows(tmp_path / "missing.jsonl")


def test_the_shipped_rows_reproduce_the_shipped_thresholds() -> None:
    # The evidence the embedded default's live monitor pads its windows with is the evidence
    # behind its thresholds: refitting them gives the shipped values back (fin_ner's re-recorded
    # rows certify a looser value than the one shipped; the refit would only loosen it slightly).
    root = Path(__file__).resolve().parents[2]
    rows = load_calibration_rows(root / "artifacts/thresholds/embedded-default.rows.jsonl")
    shipped = ThresholdTable.load(root / "artifacts/thresholds/embedded-default.json").thresholds["specialist"]
    calibrator = ConformalCalibrator(method="quality", delta=0.1, epsilon_per_task={t: 0.04 for t in shipped})
    calibrator.conformalize([r.uncertainty if r.uncertainty is not None else math.nan for r in rows],
                            [r.correct for r in rows], [r.tier for r in rows], [r.task for r in rows],
                            loss=[math.nan if r.loss is None else r.loss for r in rows])
    for task, delta in shipped.items():
        assert calibrator.thresholds_["specialist"][task] >= delta - 1e-4, task
        if task != "fin_ner":
            assert calibrator.thresholds_["specialist"][task] == pytest.approx(delta, abs=1e-4), task


def test_calibration_rows_keep_the_graded_loss(tmp_path: Path) -> None:
    rows = [CalibrationRow("specialist", "cs_response", 0.1, True, "a", 0.25),
            CalibrationRow("specialist", "cs_intent", None, False, "b")]
    assert load_calibration_rows(save_calibration_rows(tmp_path / "rows.jsonl", rows)) == rows
