"""The phased load benchmark's bookkeeping: per-phase summaries, the Markdown table and the plot."""

from __future__ import annotations

from pathlib import Path

from routenlp_ray.bench.load import Phase, _phase_summary, bench_config, plot_timeline, write_markdown
from routenlp_ray.config import load_config
from tests.conftest import REPO_ROOT

PHASES = (Phase("light", 10.0, 1, 0.5, kill="router"), Phase("load", 10.0, 4, 0.0))
REQUESTS = (
    [{"phase": "light", "t": float(i), "ok": True, "latency_ms": 10.0 + i, "answered_by": "specialist"} for i in range(10)]
    + [{"phase": "load", "t": 10.0 + i / 10, "ok": True, "latency_ms": 100.0, "answered_by": "frontier"} for i in range(99)]
    + [{"phase": "load", "t": 19.9, "ok": False, "latency_ms": 5000.0, "error": "APIConnectionError: boom"}]
)
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


def test_the_report_files_are_written(tmp_path: Path) -> None:
    report = {
        "created_at": "2026-11-25T12:00:00", "machine": {"cpus": 2}, "config": "c.yaml", "tasks": ["cs_intent"],
        "client": "openai", "autoscaling_override": {}, "environment": {
            "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"},
        "phases": [_phase_summary(p, REQUESTS, SAMPLES, (i * 10.0, i * 10.0 + 10)) for i, p in enumerate(PHASES)],
        "kills": [{"phase": "light", "deployment": "router", "pid": 42, "t": 5.0}],
        "http_attempts": {"attempts": 111, "failed_and_retried": 2},
        "timeline": {"replicas": SAMPLES, "requests": REQUESTS},
    }
    write_markdown(report, tmp_path / "bench_load.md")
    text = (tmp_path / "bench_load.md").read_text()
    assert "| light | 1 | 10 | 10 | 0 | 1.0 |" in text and "router (pid 42, t=5s)" in text
    assert "tier-specialist 1-2" in text and "111, of which 2 failed" in text
    plot_timeline(report, tmp_path / "bench_load.png")
    assert (tmp_path / "bench_load.png").read_bytes()[:4] == b"\x89PNG"


def test_the_bench_config_overrides_only_the_named_tier(tmp_path: Path) -> None:
    config = load_config(REPO_ROOT / "serve_config.local.yaml")
    quick = bench_config(config, tmp_path, {"specialist": {"target_ongoing_requests": 0.5, "upscale_delay_s": 2.0}})
    assert quick.tier("specialist").autoscaling.target_ongoing_requests == 0.5
    assert quick.tier("specialist").autoscaling.max_replicas == config.tier("specialist").autoscaling.max_replicas
    assert quick.tier("frontier").autoscaling == config.tier("frontier").autoscaling
    assert quick.storage.log_uri == str(tmp_path / "load-log")
