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
    assert set(calibrated) == {"cascade_coverage", "cascade_risk", "cascade_quality"}
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
    quality = tmp_path / "quality.json"
    assert main(["calibrate", *common, "--records", str(records), "--tasks", *TASKS, "--method", "quality",
                 "--version", "quality-ci", "--out", str(quality)]) == 0
    assert ThresholdTable.load(quality).version == "quality-ci"

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


def test_bench_routing_runs_unchanged_on_a_folder_with_a_test_split(tmp_path: Path, data_dir: Path) -> None:
    """``routenlp bench routing --data DIR --split test`` on router_judgments rows laid out like the held-out data.

    A slice of the real train rows plays train.jsonl and the rest a fake test.jsonl; the real
    static encoder, the project's portfolio prices and every baseline run; the saved artifact
    loads back through the serving path with identical decisions.
    """
    rows = (data_dir / "router_judgments" / "train.jsonl").read_text().splitlines()
    folder = tmp_path / "router_judgments"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(rows[:150]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(rows[150:]) + "\n")
    out, artifact = tmp_path / "routing.json", tmp_path / "artifact"
    assert main(["bench", "routing", "--data", str(folder), "--split", "test", "--seeds", "2", "--epochs", "10",
                 "--latency-queries", "40", "--out", str(out), "--save-artifact", str(artifact)]) == 0
    report = json.loads(out.read_text())
    row = report["sources"]["router_judgments"]
    assert report["split"] == "test" and 0 < row["evaluated_rows"] <= len(rows) - 150
    assert 0 < row["train_rows"] <= 150
    summary = row["summary"]
    policies = {"router", "knn", "routellm_mf", "routellm_mf_pairwise", "binary_winrate", "random", "oracle"}
    assert policies <= set(summary)
    assert summary["oracle"]["auc"]["mean"] >= summary["random"]["auc"]["mean"]
    policy = RouterStartPolicy.load(artifact)
    assert policy.rule == "utility" and policy.encoder_kind == "static"
    texts = [json.loads(r)["input"] for r in rows[150:170]]
    tasks = ["router_judgments/all"] * len(texts)
    assert RouterStartPolicy.load(artifact).decide_batch(texts, tasks) == policy.decide_batch(texts, tasks)
