from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routenlp_ray.config import parse_config
from routenlp_ray.config.monitoring import MonitoringConfig
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.conformal.thresholds import load_thresholds
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.monitoring.audits import Audit, AuditedAnswer, AuditLabeller
from routenlp_ray.monitoring.monitor import CoverageMonitor, LabelledAnswer
from routenlp_ray.monitoring.service import MonitorService
from routenlp_ray.serving import ChatCompletionRequest, FeedbackRequest, RouterService
from routenlp_ray.telemetry import QueryLog, read_records
from tests.conftest import small_config_dict


def labelled(u: float, correct: bool, ts: float, tier: str = "cheap", task: str = "cs_intent") -> LabelledAnswer:
    return LabelledAnswer(tier, task, u, correct, "audit", ts)


def test_coverage_drop_triggers_and_recalibration_restores_it() -> None:
    table = ThresholdTable(version="v0", alpha=0.1, thresholds={"cheap": {"cs_intent": 0.5}})
    monitor = CoverageMonitor(MonitoringConfig(min_labelled=30, window=100), alpha=0.1, thresholds=table, now=0.0)
    rng = np.random.default_rng(0)
    for i in range(100):  # before the shift: correct answers sit under the threshold 95% of the time
        monitor.observe(labelled(float(rng.uniform(0, 0.5 / 0.95)), True, ts=1 + i))
    assert monitor.due(now=200) is None
    assert monitor.coverage("cheap", "cs_intent").coverage > 0.9
    for i in range(150):  # the tier got worse: every uncertainty doubled
        monitor.observe(labelled(float(rng.uniform(0, 1.05)), True, ts=200 + i))
    cell = monitor.coverage("cheap", "cs_intent")
    assert cell.coverage < 0.85 and cell.ci_low < cell.coverage < cell.ci_high
    assert monitor.due(now=400) == "coverage_drop:cheap/cs_intent"
    result = monitor.recalibrate("coverage_drop:cheap/cs_intent", "v1", now=400)
    [change] = result.changes
    assert change["before"] == 0.5 and change["after"] > 0.9 and change["n"] == 250
    assert monitor.thresholds.version == "v1" and result.event()["before"] == {"thresholds_version": "v0"}
    # The estimate starts over under the new thresholds, and recovers on new traffic.
    assert monitor.coverage("cheap", "cs_intent").correct == 0
    for i in range(100):
        monitor.observe(labelled(float(rng.uniform(0, 1.05)), True, ts=500 + i))
    assert monitor.coverage("cheap", "cs_intent").coverage >= 0.85 and monitor.due(now=600) is None


def test_under_the_risk_rule_a_rising_accepted_error_rate_triggers_and_low_coverage_does_not() -> None:
    table = ThresholdTable(version="v0", thresholds={"cheap": {"cs_intent": 0.5}})
    config = MonitoringConfig(min_labelled=30, window=100, method="risk", epsilon=0.05)
    monitor = CoverageMonitor(config, alpha=0.1, thresholds=table, now=0.0)
    rng = np.random.default_rng(0)
    for i in range(100):  # strict thresholds: half the right answers are turned away, none of the accepted is wrong
        monitor.observe(labelled(float(rng.uniform(0, 1.0)), True, ts=1 + i))
    assert monitor.coverage("cheap", "cs_intent").coverage < 0.85
    assert monitor.due(now=200) is None  # low coverage is the price of the risk promise, not a breach
    for i in range(100):  # the tier drifts: a third of what it is sure of is now wrong
        monitor.observe(labelled(float(rng.uniform(0, 0.5)), i % 3 != 0, ts=200 + i))
    assert monitor.coverage("cheap", "cs_intent").accepted_error_rate > 0.2
    assert monitor.due(now=400) == "risk_breach:cheap/cs_intent"


def test_under_the_quality_rule_wrong_accepted_answers_beyond_the_task_budget_trigger() -> None:
    table = ThresholdTable(version="v0", thresholds={"cheap": {"cs_intent": 0.5}})
    config = MonitoringConfig(min_labelled=30, window=200, method="quality")
    monitor = CoverageMonitor(config, alpha=0.1, thresholds=table, now=0.0, quality_budgets={"cs_intent": 0.04})
    rng = np.random.default_rng(0)
    for i in range(200):  # wrong answers only among the rejected ones: nothing lost
        u = float(rng.uniform(0, 1.0))
        monitor.observe(labelled(u, u <= 0.5 or i % 2 == 0, ts=1 + i))
    assert monitor.coverage("cheap", "cs_intent").quality_loss == 0.0
    assert monitor.due(now=300) is None
    for i in range(200):  # drift: a fifth of all queries are now accepted and wrong
        u = float(rng.uniform(0, 1.0))
        monitor.observe(labelled(u, not (u <= 0.5 and i % 5 < 2), ts=300 + i))
    assert monitor.coverage("cheap", "cs_intent").quality_loss > 0.1
    assert monitor.due(now=600) == "quality_breach:cheap/cs_intent"


def test_schedule_trigger_and_window_of_recent_labels() -> None:
    config = MonitoringConfig(schedule_hours=1, recalibration_window=20)
    monitor = CoverageMonitor(config, alpha=0.1, thresholds=ThresholdTable(version="v0"), now=0.0)
    assert monitor.due(now=7200) is None  # nothing labelled yet: nothing to recalibrate on
    for i in range(50):
        monitor.observe(labelled(float(i), True, ts=i))  # older labels have smaller uncertainty
    assert monitor.due(now=1800) is None
    assert monitor.due(now=3600) == "schedule"
    result = monitor.recalibrate("schedule", "v1", now=3600)
    # Only the most recent 20 labels (uncertainties 30..49) were used.
    assert result.n_labelled == 20 and result.changes[0]["after"] >= 30


def test_feedback_is_kept_out_of_the_coverage_estimate() -> None:
    monitor = CoverageMonitor(MonitoringConfig(), alpha=0.1, thresholds=ThresholdTable(version="v0"), now=0.0)
    monitor.observe(LabelledAnswer("cheap", "cs_intent", 0.1, True, "feedback", 1.0))
    assert monitor.cells() == [] and monitor.n_observed == 1


def test_labeller_judges_cheap_answers_against_the_reference(tmp_path: Path, replay_file: Path) -> None:
    config = parse_config(small_config_dict(tmp_path, replay_file))
    labeller = AuditLabeller(config)
    audit = Audit("q1", "cs_intent", [AuditedAnswer("cheap", "card_arrival", 0.2)], reference="card arrival")
    [answer] = labeller.label(audit)
    assert answer.correct and answer.tier == "cheap" and answer.uncertainty == 0.2
    audit.answers = [AuditedAnswer("cheap", "lost_or_stolen_card", 0.2)]
    assert not labeller.label(audit)[0].correct
    assert labeller.label(Audit("q2", "chat", [AuditedAnswer("cheap", "hi", 0.1)], reference="hello")) == []


class ScriptedTier:
    def __init__(self, text: str, logprobs: list[float] | None) -> None:
        self.text, self.logprobs, self.calls = text, logprobs, 0

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        return GenerationResult(self.text, self.logprobs, prompt_tokens=10, completion_tokens=2, latency_ms=1.0)


def monitored_config(tmp_path: Path, replay_file: Path, threshold: float):
    return parse_config(small_config_dict(
        tmp_path, replay_file,
        cascade={"alpha": 0.1, "thresholds": {"cheap": {"cs_intent": threshold}}},
        monitoring={"enabled": True, "audit_rate": 1.0, "min_labelled": 10, "artifacts_dir": str(tmp_path / "live")},
    ))


async def test_router_audits_reach_the_monitor_which_recalibrates_and_the_router_applies_it(
    tmp_path: Path, replay_file: Path
) -> None:
    config = monitored_config(tmp_path, replay_file, threshold=0.05)
    log = QueryLog(config.storage)
    monitor = MonitorService(config, load_thresholds(config.cascade), query_log=log)
    # The cheap tier is right (it says what the frontier says) but less sure than its threshold allows.
    cheap, frontier = ScriptedTier("card_arrival", [-0.2, -0.2]), ScriptedTier("card_arrival", None)
    router = RouterService(config, {"cheap": cheap, "frontier": frontier}, query_log=log, monitor_sink=monitor.submit)
    body = ChatCompletionRequest.model_validate(
        {"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "where is my new card?"}]}
    )
    for _ in range(12):
        routing = (await router.chat(body))["routing"]
        assert routing["answered_by"] == "frontier"
    await router.drain()
    # Every escalated-but-right answer was a coverage violation: the drop fired a recalibration.
    assert monitor.recalibrations == 1
    new = monitor.current(router.live.thresholds.version)
    assert new is not None and new["thresholds"]["cheap"]["cs_intent"] == pytest.approx(0.2)
    assert router.live.apply_thresholds(ThresholdTable.model_validate(new), reason="coverage monitor")
    assert (await router.chat(body))["routing"]["answered_by"] == "cheap"
    await router.drain()  # the accepted answer is audited with a shadow call to the frontier
    assert frontier.calls == 13
    # Feedback on a cheap answer reaches the monitor as a (biased, so separate) label.
    response = await router.chat(body)
    await router.feedback(FeedbackRequest(response_id=response["id"], accepted=False))
    await router.drain()
    assert monitor.monitor.n_observed == 12 + 2 + 1
    log.close()
    events = read_records(config.storage.log_uri, "events")
    recalibration = next(e for e in events if e["event"] == "recalibration")
    assert recalibration["reason"] == "coverage_drop:cheap/cs_intent"
    assert recalibration["changes"][0]["before"] == 0.05 and recalibration["changes"][0]["after"] == pytest.approx(0.2)
    applied = next(e for e in events if e["event"] == "thresholds_applied")
    assert applied["after"]["thresholds_version"] == recalibration["after"]["thresholds_version"]
    assert (tmp_path / "live" / f"{recalibration['after']['thresholds_version']}.json").exists()


async def test_monitor_rejects_unknown_payloads_and_adopts_published_tables(tmp_path: Path, replay_file: Path) -> None:
    config = monitored_config(tmp_path, replay_file, threshold=0.05)
    monitor = MonitorService(config, ThresholdTable(version="v0"))
    with pytest.raises(ValueError, match="unknown monitor payload kind 'x'"):
        await monitor.submit({"kind": "x"})
    assert monitor.adopt(ThresholdTable(version="published-1").model_dump(mode="json")) == "published-1"
    assert monitor.current("published-1") is None and monitor.status()["thresholds_version"] == "published-1"


def test_labeller_gives_a_graded_metric_the_quality_an_answer_loses(tmp_path: Path, replay_file: Path) -> None:
    raw = small_config_dict(tmp_path, replay_file)
    raw["tasks"].append({"name": "fin_ner"})
    labeller = AuditLabeller(parse_config(raw))
    reference = '[{"text": "Acme Corp", "type": "ORG"}, {"text": "Paris", "type": "LOC"}]'
    half = '[{"text": "Acme Corp", "type": "ORG"}]'  # one entity of two: F1 2/3
    [answer] = labeller.label(Audit("q1", "fin_ner", [AuditedAnswer("cheap", half, 0.2)], reference=reference))
    assert answer.loss == pytest.approx(1 - 2 / 3)
    [exact] = labeller.label(Audit("q2", "fin_ner", [AuditedAnswer("cheap", reference, 0.1)], reference=reference))
    assert exact.correct and exact.loss == 0.0
