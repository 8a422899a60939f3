"""The phased load benchmark's bookkeeping: per-phase summaries, the Markdown table and the plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from routenlp_ray.bench.load import Phase, _phase_summary, bench_config, load_markdown, plot_timeline, summarize_phases
from routenlp_ray.bench.savings import binned_saved_share
from routenlp_ray.config import load_config
from tests.conftest import REPO_ROOT

PHASES = (Phase("light", 10.0, 1, 0.5, kill="router"), Phase("load", 10.0, 4, 0.0))
# The specialist saves 90% of the frontier's cost in the light phase; under load the frontier answers everything.
REQUESTS = (
    [{"phase": "light", "t": float(i), "ok": True, "latency_ms": 10.0 + i, "answered_by": "specialist",
      "cost_usd": 0.0001, "frontier_cost_usd": 0.001, "saved_usd": 0.0009, "thresholds_version": "v4"}
     for i in range(10)]
    + [{"phase": "load", "t": 10.0 + i / 10, "ok": True, "latency_ms": 100.0, "answered_by": "frontier",
        "cost_usd": 0.001, "frontier_cost_usd": 0.001, "saved_usd": 0.0, "thresholds_version": "live-1" if i else "v4"}
       for i in range(99)]
    + [{"phase": "load", "t": 19.9, "ok": False, "latency_ms": 5000.0, "error": "APIConnectionError: boom"}]
)
EVENTS = [{"t": 10.5, "event": "recalibration", "reason": "coverage_drop", "before_version": "v4",
           "after_version": "live-1", "changes": [{"tier": "specialist", "task": "cs_intent", "after": None}]}]
SAMPLES = [{"t": float(t), "replicas": {"tier-specialist": 1 if t < 12 else 2, "router": 2}} for t in range(20)]


def test_a_phase_summary_counts_errors_throughput_latency_and_replica_range() -> None:
    light = _phase_summary(PHASES[0], REQUESTS, SAMPLES, (0.0, 10.0))
    load = _phase_summary(PHASES[1], REQUESTS, SAMPLES, (10.0, 20.0))
    assert (light["answered"], light["errors"], light["throughput_rps"]) == (10, 0, 1.0)
    assert light["replicas"]["tier-specialist"] == {"min": 1, "max": 1}
    assert (load["answered"], load["errors"], load["error_examples"]) == (99, 1, ["APIConnectionError: boom"])
    assert load["latency_ms"]["p99"] == 100.0  # the failed request is counted as an error, not a latency
    assert load["replicas"]["tier-specialist"] == {"min": 1, "max": 2}
    assert load["answered_by"] == {"frontier": 99}


def test_phases_report_savings_versions_and_events_and_flag_a_collapse_without_audited_errors() -> None:
    light, load = summarize_phases(PHASES, REQUESTS, SAMPLES, [], EVENTS)
    assert light["savings"]["saved_share"] == pytest.approx(0.9) and load["savings"]["saved_share"] == 0.0
    assert load["savings"]["thresholds_versions"] == {"v4": 1, "live-1": 98}
    assert [e["event"] for e in load["savings"]["events"]] == ["recalibration"] and not light["savings"]["events"]
    assert not light["savings_flag"]["flagged"]
    assert load["savings_flag"]["flagged"] and load["savings_flag"]["vs_previous"]["relative_fall"] == 1.0


def test_the_report_files_are_written(tmp_path: Path) -> None:
    report = {
        "created_at": "2026-11-25T12:00:00", "machine": {"cpus": 2}, "config": "c.yaml", "tasks": ["cs_intent"],
        "client": "openai", "autoscaling_override": {}, "environment": {
            "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"},
        "phases": summarize_phases(PHASES, REQUESTS, SAMPLES, [], EVENTS),
        "kills": [{"phase": "light", "deployment": "router", "pid": 42, "t": 5.0}],
        "http_attempts": {"attempts": 111, "failed_and_retried": 2},
        "monitor_events": EVENTS, "audit_labels": 0,
        "timeline": {"replicas": SAMPLES, "requests": REQUESTS, "saved_share": binned_saved_share(REQUESTS, 5.0)},
    }
    text = load_markdown(report, "bench_load.png")
    assert "| light | 1 | 10 | 10 | 0 | 1.0 |" in text and "router (pid 42, t=5s)" in text
    assert "tier-specialist 1-2" in text and "111, of which 2 failed" in text
    assert "| light | 90.0% |" in text and "| load | 0.0% |" in text and "`live-1` 98" in text
    assert "**Flagged: savings fell without a quality change in phase load:** saved share 90.0% -> 0.0%" in text
    assert "- t=10.5 s: **recalibration** (coverage_drop), `v4` -> `live-1`" in text
    plot_timeline(report, tmp_path / "bench_load.png")
    assert (tmp_path / "bench_load.png").read_bytes()[:4] == b"\x89PNG"


def test_the_bench_config_overrides_only_the_named_tier(tmp_path: Path) -> None:
    config = load_config(REPO_ROOT / "serve_config.local.yaml")
    quick = bench_config(config, tmp_path, {"specialist": {"target_ongoing_requests": 0.5, "upscale_delay_s": 2.0}})
    assert quick.tier("specialist").autoscaling.target_ongoing_requests == 0.5
    assert quick.tier("specialist").autoscaling.max_replicas == config.tier("specialist").autoscaling.max_replicas
    assert quick.tier("frontier").autoscaling == config.tier("frontier").autoscaling
    assert quick.storage.log_uri == str(tmp_path / "load-log")
    assert quick.monitoring.audit_rate == config.monitoring.audit_rate
    audited = bench_config(config, tmp_path, {}, {"audit_rate": 0.3})
    assert audited.monitoring.audit_rate == 0.3
    assert audited.monitoring.artifacts_dir == str(tmp_path / "load-thresholds")
