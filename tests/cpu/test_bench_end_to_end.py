"""Record -> train the router -> benchmark, end to end on a small slice with the real SmolLM2 tier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray.cli import main
from routenlp_ray.config import load_config
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.routing.learned_policy import RouterStartPolicy
from tests.conftest import REPO_ROOT, tier_named

pytestmark = pytest.mark.slow

TASKS = ["cs_intent", "legal_risk"]


def test_record_train_and_benchmark_on_a_small_slice(tmp_path: Path, data_dir: Path) -> None:
    config = load_config(REPO_ROOT / "serve_config.local.yaml").model_dump(mode="json")
    tier_named(config, "frontier")["engine"]["records"] = [str(data_dir / t / "validation.jsonl") for t in TASKS]
    config_file = tmp_path / "routenlp.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    records, common = tmp_path / "records", ["--config", str(config_file), "--data-dir", str(data_dir)]

    assert main(["record", *common, "--out", str(records), "--tasks", *TASKS, "--limit", "8", "--seed", "3",
                 "--max-tokens", "cs_intent=4", "legal_risk=4"]) == 0
    # Resuming records nothing new.
    assert main(["record", *common, "--out", str(records), "--tasks", *TASKS, "--limit", "8", "--seed", "3",
                 "--max-tokens", "cs_intent=4", "legal_risk=4"]) == 0

    out = tmp_path / "bench" / "bench_tasks.json"
    assert main(["bench", "tasks", *common, "--records", str(records), "--tasks", *TASKS, "--epochs", "5",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["per_task"]) == set(TASKS)
    policies = report["per_task"]["cs_intent"]["policies"]
    assert {"frontier_only", "cheapest_only", "random", "routellm_binary", "cascade", "router", "router_cascade",
            "oracle"} <= set(policies)
    calibrated = report["per_task"]["cs_intent"]["calibrated"]
    assert set(calibrated) == {"cascade_coverage", "cascade_risk"}
    assert set(calibrated["cascade_risk"]["thresholds"]) == {"specialist", "smollm2"}
    assert policies["frontier_only"]["retention"] == 1.0
    assert report["router_decision_latency"]["batched_decisions_per_s"] > 0
    assert out.with_suffix(".md").read_text().startswith("# Six-task routing benchmark")
    assert out.with_suffix(".png").stat().st_size > 10_000

    thresholds = tmp_path / "thresholds.json"
    assert main(["calibrate", *common, "--records", str(records), "--tasks", *TASKS, "--version", "cal-ci",
                 "--out", str(thresholds)]) == 0
    table = ThresholdTable.load(thresholds)
    # SmolLM2 does not serve these tasks in the embedded default, so it gets no entry for them.
    assert table.version == "cal-ci" and "smollm2" not in table.thresholds
    assert set(table.thresholds["specialist"]) == set(TASKS)

    artifacts = tmp_path / "artifacts"
    assert main(["train-router", *common, "--records", str(records), "--tasks", *TASKS, "--epochs", "5",
                 "--version", "router-ci", "--out", str(artifacts)]) == 0
    policy = RouterStartPolicy.load(artifacts / "router-ci")
    assert set(policy.targets) == set(TASKS)
    tiers = ["specialist", "smollm2", "frontier"]
    # The router was trained on exactly these tiers, so start_tier's fall-back to the cheapest
    # live tier cannot hide a wrong pick below.
    assert policy.router.tiers == tiers
    text = "where is my new card?"
    # start_tier picks what the trained router and the task's chosen target pick (decide_batch has no fall-back).
    assert policy.start_tier("cs_intent", text, tiers) == policy.decide_batch([text], ["cs_intent"])[0]
    # The target decides: one no probability clears starts at the frontier, one every tier clears at the cheapest.
    policy.targets["cs_intent"] = 1.01
    assert policy.start_tier("cs_intent", text, tiers) == "frontier"
    policy.targets["cs_intent"] = 0.0
    assert policy.start_tier("cs_intent", text, tiers) == "specialist"


def test_router_judgments_benchmark_runs(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "judgments.json"
    assert main(["bench", "routing", "--data-dir", str(data_dir), "--splits", "1", "--epochs", "5",
                 "--out", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert {"router_soft_utility", "routellm_binary", "random", "oracle"} <= set(summary)
    assert summary["oracle"]["auc_mean"] >= summary["random"]["auc_mean"]
