"""Savings that hold under live traffic, on real Ray Serve with the coverage monitor.

Two cheap-tier cells share one app. On legal_risk the traffic repeats the collapse seen live:
4 of the first 38 audited answers are accepted and wrong, which fired the old monitor, whose
refit on the few rows at hand left the tier no threshold, and all traffic went to the frontier.
Here the specialist keeps answering and nothing is raised. On cs_intent the cheap tier really
breaks (an injected fault: sure of itself and wrong): the monitor shows it on enough evidence,
tightens the threshold past the wrong answers, and the answers users get are right again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from routenlp_ray.conformal.calibrator import ConformalCalibrator, wilson_interval
from routenlp_ray.conformal.rows import CalibrationRow, save_calibration_rows
from routenlp_ray.telemetry import read_records
from tests.cpu.conftest import deploy_declaratively, prometheus_text, wait_for

pytestmark = pytest.mark.slow

APP, PREFIX = "savings", "/savings"
THRESHOLDS = {"legal_risk": 0.17, "cs_intent": 0.29}
BUDGET = 0.04  # 1 - quality_target of both built-in tasks
INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "refund_not_showing_up"]


def legal_risk_traffic() -> list[tuple[str, str, str, float]]:
    """(input, frontier answer, cheap answer, cheap mean NLL): the collapse's traffic."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        truth = "fair" if i % 3 else "potentially_unfair"
        # 4 of the first 38 accepted and wrong (the old trigger), then the tier's usual 1-2%.
        wrong = i in (3, 12, 21, 30) or (i >= 38 and i % 60 == 0)
        rows.append((f"clause {i}: the provider may change these terms at any time.", truth,
                     "clearly_unfair" if wrong else truth, float(rng.uniform(0.0, 0.15))))
    return rows


def cs_intent_traffic() -> list[tuple[str, str, str, float]]:
    """60 queries the cheap tier gets right, then 150 with the fault: sure of itself, and wrong."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(210):
        truth = INTENTS[i % len(INTENTS)]
        faulty = i >= 60
        cheap = INTENTS[(i + 1) % len(INTENTS)] if faulty else truth
        rows.append((f"intent question {i}: what happened to my card?", truth, cheap,
                     0.02 if faulty else float(rng.uniform(0.0, 0.25))))
    return rows


def shipped_rows(task: str, seed: int) -> list[CalibrationRow]:
    """What the thresholds were calibrated on: sure answers right 99% of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1000):
        u = float(rng.uniform(0, 1))
        right = rng.random() > (0.01 if u <= THRESHOLDS[task] else 0.4)
        rows.append(CalibrationRow("cheap", task, u, bool(right), f"{task}-{i}"))
    return rows


@pytest.fixture(scope="module")
def app(serve_instance: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("savings")
    cheap_rows, frontier_rows = [], []
    for task, traffic in (("legal_risk", legal_risk_traffic()), ("cs_intent", cs_intent_traffic())):
        for text, truth, cheap, nll in traffic:
            cheap_rows.append({"task": task, "input": text, "reference": cheap, "logprobs": [-nll, -nll]})
            frontier_rows.append({"task": task, "input": text, "reference": truth})
    (tmp / "cheap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cheap_rows))
    (tmp / "frontier.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frontier_rows))
    save_calibration_rows(tmp / "rows.jsonl", shipped_rows("legal_risk", 2) + shipped_rows("cs_intent", 3))
    small = {"num_cpus": 0.1}
    args = {
        "tiers": [
            {"name": "cheap", "engine": {"type": "replay", "records": [str(tmp / "cheap.jsonl")],
                                         "logprobs_field": "logprobs"},
             "pricing": {"input_per_1m": 0.01, "output_per_1m": 0.01}, "resources": small},
            {"name": "frontier", "engine": {"type": "replay", "records": [str(tmp / "frontier.jsonl")]},
             "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": small},
        ],
        "tasks": [{"name": "legal_risk"}, {"name": "cs_intent"}],
        "cascade": {"alpha": 0.1, "thresholds": {"cheap": THRESHOLDS}},
        # The shipped defaults of the evidence rules (min_labelled 100, 99% confidence, windows of
        # 2,000 padded with the shipped rows); every query audited so the test is short.
        "monitoring": {"enabled": True, "audit_rate": 1.0, "method": "quality",
                       "calibration_rows": str(tmp / "rows.jsonl"), "check_interval_s": 1.0,
                       "poll_interval_s": 0.5, "artifacts_dir": str(tmp / "live")},
        "storage": {"log_uri": str(tmp / "log"), "spool_dir": str(tmp / "spool")},
        "server": {"default_task": "cs_intent", "resources": small, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    }
    deploy_declaratively([{"name": APP, "route_prefix": PREFIX, "import_path": "deployments.builders:build_app",
                           "args": args}])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{serve_instance}{PREFIX}/v1", api_key="unused", max_retries=0)
    yield {"client": client, "log": str(tmp / "log")}


def ask(client: openai.OpenAI, task: str, text: str) -> tuple[str, dict[str, Any]]:
    response = client.chat.completions.create(model=f"routenlp/{task}", messages=[{"role": "user", "content": text}])
    return response.choices[0].message.content or "", response.model_extra["routing"]


def monitor_status() -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle("coverage-monitor", app_name=APP).status.remote().result()


def cell(tier: str, task: str) -> dict[str, Any]:
    return next(c for c in monitor_status()["cells"] if (c["tier"], c["task"]) == (tier, task))


def labels(log: str, task: str) -> list[dict[str, Any]]:
    return sorted((r for r in read_records(log, "labels") if r["task"] == task), key=lambda r: r["t"])


def old_monitor_would_have_removed_the_threshold(rows: list[dict[str, Any]]) -> bool:
    """The old rule on the same labels: a Wilson lower bound over the 4% budget on 30+ audits,
    then a quality-rule refit on the rows at hand, which certifies nothing."""
    for n in range(30, len(rows) + 1):
        window = rows[:n]
        lost = sum(r["accepted"] and not r["correct"] for r in window)
        if wilson_interval(lost, n)[0] > BUDGET:
            refit = ConformalCalibrator(method="quality", epsilon=BUDGET, delta=0.1).conformalize(
                [r["uncertainty"] for r in window], [r["correct"] for r in window],
                ["cheap"] * n, ["legal_risk"] * n)
            return refit.thresholds_["cheap"]["legal_risk"] is None
    return False


def test_the_collapse_traffic_leaves_the_cheap_tier_answering_and_raises_nothing(app: dict[str, Any]) -> None:
    client = app["client"]
    answered = [ask(client, "legal_risk", text)[1]["answered_by"] for text, *_ in legal_risk_traffic()]
    wait_for(lambda: cell("cheap", "legal_risk")["breach"]["n"] >= 150, timeout_s=60)
    seen = labels(app["log"], "legal_risk")
    assert len(seen) >= 150 and old_monitor_would_have_removed_the_threshold(seen)
    # The new rules: no breach shown on this evidence, the threshold stays, the tier keeps answering.
    state = cell("cheap", "legal_risk")
    assert not state["breach"]["breached"] and state["threshold"] == THRESHOLDS["legal_risk"]
    assert not state["short_of_evidence"] and monitor_status()["recalibrations"] == 0
    assert answered.count("cheap") == len(answered)
    events = read_records(app["log"], "events")
    assert not [e for e in events if e["event"] in ("recalibration", "threshold_kept", "threshold_disabled")]


def test_a_real_fault_is_shown_on_evidence_and_quality_holds(app: dict[str, Any]) -> None:
    client = app["client"]
    traffic = cs_intent_traffic()
    before = [ask(client, "cs_intent", text)[1]["answered_by"] for text, *_ in traffic[:120]]
    assert before[:60].count("cheap") == 60  # healthy: the cheap tier answers
    wait_for(lambda: monitor_status()["recalibrations"] >= 1, timeout_s=60)
    events = read_records(app["log"], "events")
    [recalibration] = [e for e in events if e["event"] == "recalibration"]
    assert recalibration["reason"] == "quality_breach:cheap/cs_intent" and recalibration["published"]
    [change] = recalibration["changes"]  # only the breached cell is refitted
    assert change["task"] == "cs_intent" and change["action"] in ("tightened", "disabled")
    assert change["n_shipped"] == 0 and change["breach_test"]["n"] >= 100 and change["breach_test"]["breached"]
    assert change["after"] is None or change["after"] < 0.02
    # Quality holds: once the routers have the new thresholds, users get the frontier's right answers.
    wait_for(lambda: ask(client, "cs_intent", "intent question 0: what happened to my card?")[1]["thresholds_version"]
             == recalibration["after"]["thresholds_version"], timeout_s=30)
    after = [(ask(client, "cs_intent", text), truth) for text, truth, *_ in traffic[150:]]
    right = sum(content.strip() == truth for (content, _), truth in after)
    assert right == len(after) and all(routing["answered_by"] == "frontier" for (_, routing), _ in after)
    # legal_risk was not touched by cs_intent's breach.
    assert cell("cheap", "legal_risk")["threshold"] == THRESHOLDS["legal_risk"]


def test_the_evidence_reaches_prometheus(app: dict[str, Any]) -> None:
    text = prometheus_text("routenlp_breach_log10_e_value", "routenlp_threshold_actions",
                           "routenlp_threshold_short_of_evidence")
    assert 'routenlp_breach_log10_e_value{' in text and 'task="legal_risk"' in text
    assert 'action="tightened"' in text or 'action="disabled"' in text
