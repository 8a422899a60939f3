"""The operations kit parses and stays true to the code: Grafana dashboard and KubeRay manifests."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "routenlp.json"
METRIC_SOURCES = [REPO_ROOT / "routenlp_ray" / "telemetry", REPO_ROOT / "routenlp_ray" / "monitoring"]
# Ray's Prometheus exporter names a custom metric `ray_<name>`; counters get `_total`, and a
# histogram is exported as its `_bucket`, `_count` and `_sum` series (checked on Ray 2.60).
SERIES_SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum")}


def defined_metrics() -> dict[str, str]:
    """Every ``ray.util.metrics`` metric the library defines: name -> kind."""
    metrics: dict[str, str] = {}
    for folder in METRIC_SOURCES:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in SERIES_SUFFIXES and node.args
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    metrics[node.args[0].value] = node.func.id
    return metrics


def prometheus_series() -> set[str]:
    return {f"ray_{name}{suffix}" for name, kind in defined_metrics().items() for suffix in SERIES_SUFFIXES[kind]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_the_metric_parser_finds_the_router_and_monitor_metrics() -> None:
    metrics = defined_metrics()
    assert metrics["routenlp_requests"] == "Counter"
    assert metrics["routenlp_request_latency_ms"] == "Histogram"
    assert metrics["routenlp_coverage"] == "Gauge"


def test_the_dashboard_names_only_metrics_that_exist_as_ray_exports_them() -> None:
    known = prometheus_series()
    named = {m for expr in dashboard_exprs() for m in re.findall(r"\b[a-z_]*routenlp_[a-z_]+\b", expr)}
    assert named, "the dashboard queries no routenlp metric"
    unknown = sorted(named - known)
    assert not unknown, f"dashboard names metrics no code exports: {unknown}; exported: {sorted(known)}"


def test_the_dashboard_covers_cost_savings_share_escalations_fallbacks_coverage_and_latency() -> None:
    text = "\n".join(dashboard_exprs())
    for series in ("ray_routenlp_cost_usd_total", "ray_routenlp_saved_usd_total", "ray_routenlp_requests_total",
                   "ray_routenlp_escalations_total", 'status="fallback"', "ray_routenlp_coverage",
                   "ray_routenlp_request_latency_ms_bucket", "ray_routenlp_tier_latency_ms_bucket"):
        assert series in text, f"no panel queries {series}"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)


def kuberay(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "deploy" / "kuberay" / name).read_text())


def test_the_rayservice_carries_serve_config_yaml() -> None:
    service = kuberay("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    carried = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert carried == yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert all(g["template"]["spec"]["containers"] for g in cluster["workerGroupSpecs"])


def test_the_rayservice_has_gpu_workers_for_every_tier_accelerator() -> None:
    service = kuberay("rayservice.yaml")
    carried = yaml.safe_load(service["spec"]["serveConfigV2"])
    wanted = {t["engine"].get("accelerator_type") for t in carried["applications"][0]["args"]["tiers"]} - {None}
    groups = " ".join(g["groupName"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    for accelerator in wanted:
        assert accelerator.lower() in groups, f"no worker group for {accelerator}"


def test_the_raycronjob_parses_and_runs_the_loop() -> None:
    job = kuberay("raycronjob.yaml")
    assert job["kind"] == "RayCronJob"
    assert "routenlp loop run" in job["spec"]["jobTemplate"]["entrypoint"]


def test_the_scheduled_loop_settings_are_valid_loop_settings() -> None:
    from routenlp_ray.loop.iteration import LoopSettings

    settings = LoopSettings.model_validate(yaml.safe_load((REPO_ROOT / "deploy" / "loop.yaml").read_text()))
    assert settings.top_cost_share == 0.4 and settings.distill.use_gpu and settings.gate_cost_tolerance == 0.0
    assert settings.calibration == "quality"


def test_the_local_config_keeps_two_router_replicas() -> None:
    from routenlp_ray.config import load_config

    server = load_config(Path(REPO_ROOT / "serve_config.local.yaml")).server
    assert server.autoscaling.min_replicas >= 2
