"""A live distribution shift on real Ray Serve: coverage drops, recalibration fires by itself,
the router picks the new thresholds up without a restart, and coverage recovers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from routenlp_ray.telemetry import read_records
from tests.cpu.conftest import deploy_declaratively, prometheus_text, wait_for

pytestmark = pytest.mark.slow

PREFIX = "/live"
APP = "live"
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "refund_not_showing_up"]
N_PER_PHASE = 40


def queries(phase: str) -> list[tuple[str, str]]:
    return [(f"{phase} question {i}: what about my account?", LABELS[i % len(LABELS)]) for i in range(3 * N_PER_PHASE)]


@pytest.fixture(scope="module")
def app(serve_instance: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("live")
    rng = np.random.default_rng(0)
    cheap_rows, frontier_rows = [], []
    # Before the shift the cheap tier is right and sure (mean NLL under 0.3); after it, it is
    # still right but much less sure (0.5-0.9): the calibrated threshold 0.3 now rejects it.
    for phase, (low, high) in {"before": (0.0, 0.3), "after": (0.5, 0.9)}.items():
        for text, label in queries(phase):
            nll = float(rng.uniform(low, high))
            cheap_rows.append({"task": "cs_intent", "input": text, "reference": label, "logprobs": [-nll, -nll]})
            frontier_rows.append({"task": "cs_intent", "input": text, "reference": label})
    (tmp_path / "cheap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cheap_rows))
    (tmp_path / "frontier.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frontier_rows))
    small = {"num_cpus": 0.1}
    args = {
        "tiers": [
            {"name": "cheap", "engine": {"type": "replay", "records": [str(tmp_path / "cheap.jsonl")],
                                         "logprobs_field": "logprobs"},
             "pricing": {"input_per_1m": 0.1, "output_per_1m": 0.2}, "resources": small},
            {"name": "frontier", "engine": {"type": "replay", "records": [str(tmp_path / "frontier.jsonl")]},
             "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": small},
        ],
        "tasks": [{"name": "cs_intent", "system_prompt": "Answer with the intent label.", "metric": "macro_f1"}],
        "cascade": {"alpha": 0.1, "thresholds": {"cheap": {"cs_intent": 0.3}}},
        # A short recalibration window so two recalibrations forget the pre-shift traffic (default 2000).
        "monitoring": {"enabled": True, "audit_rate": 1.0, "min_labelled": 15, "window": 30, "recalibration_window": 20,
                       "check_interval_s": 1.0, "poll_interval_s": 0.5, "artifacts_dir": str(tmp_path / "live")},
        "storage": {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")},
        # One router replica, so the pid /healthz reports is the process that must not restart.
        "server": {"default_task": "cs_intent", "resources": small, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    }
    deploy_declaratively([{"name": APP, "route_prefix": PREFIX, "import_path": "deployments.builders:build_app",
                           "args": args}])
    yield {"base": f"http://127.0.0.1:{serve_instance}{PREFIX}", "log": str(tmp_path / "log"),
           "live": tmp_path / "live"}


def ask(client: openai.OpenAI, text: str) -> dict[str, Any]:
    response = client.chat.completions.create(model="routenlp/cs_intent", messages=[{"role": "user", "content": text}])
    return response.model_extra["routing"]


def monitor_status() -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle("coverage-monitor", app_name=APP).status.remote().result()


def cheap_coverage() -> float | None:
    cells = {(c["tier"], c["task"]): c for c in monitor_status()["cells"]}
    cell = cells.get(("cheap", "cs_intent"))
    return cell["coverage"] if cell else None


def test_shift_drops_coverage_recalibrates_live_and_recovers(app: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{app['base']}/v1", api_key="unused", max_retries=0)
    health = httpx.get(f"{app['base']}/healthz", timeout=10).json()
    pid, first_version = health["pid"], health["thresholds_version"]

    before = [ask(client, text) for text, _ in queries("before")[:N_PER_PHASE]]
    assert all(r["answered_by"] == "cheap" for r in before)
    wait_for(lambda: (cheap_coverage() or 0) >= 0.9, timeout_s=30)
    assert monitor_status()["recalibrations"] == 0

    # The shift: every answer now escalates, and the audits show those were correct answers turned away.
    shifted = queries("after")
    after = [ask(client, text) for text, _ in shifted[:N_PER_PHASE]]
    assert all(r["answered_by"] == "frontier" for r in after[:5])
    wait_for(lambda: monitor_status()["recalibrations"] >= 1)
    wait_for(lambda: httpx.get(f"{app['base']}/healthz", timeout=10).json()["thresholds_version"] != first_version)
    health = httpx.get(f"{app['base']}/healthz", timeout=10).json()
    assert health["pid"] == pid and health["thresholds_version"].startswith("live-")

    # Recovered: on fresh shifted traffic the cheap tier answers again and coverage is back near 1 - alpha.
    recovered = [ask(client, text) for text, _ in shifted[N_PER_PHASE : 2 * N_PER_PHASE]]
    assert sum(r["answered_by"] == "cheap" for r in recovered) >= 0.8 * N_PER_PHASE
    assert all(r["thresholds_version"].startswith("live-") for r in recovered)
    wait_for(lambda: (cheap_coverage() or 0) >= 0.85)

    # Visible in the logs: the recalibration with before/after values, and each router applying it.
    events = read_records(app["log"], "events")
    recalibration = next(e for e in events if e.get("event") == "recalibration")
    assert recalibration["reason"] == "coverage_drop:cheap/cs_intent"
    [change] = recalibration["changes"]
    assert change["before"] == 0.3 and change["after"] > 0.5
    assert (app["live"] / f"{recalibration['after']['thresholds_version']}.json").exists()
    applied = [e for e in events if e.get("event") == "thresholds_applied"]
    assert applied and applied[0]["changes"][0]["before"] == 0.3


def test_coverage_metrics_reach_prometheus(app: dict[str, Any]) -> None:
    text = prometheus_text("routenlp_coverage", "routenlp_recalibrations")
    assert 'routenlp_coverage{' in text and 'tier="cheap"' in text
    assert "routenlp_recalibrations" in text and "routenlp_threshold" in text
