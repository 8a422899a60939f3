"""One full loop iteration on a small budget, against a running embedded service.

Traffic goes through the real router (SmolLM2 tier + replay frontier) into the query log;
the iteration mines it, distils LoRA adapters on Ray Train CPU workers, evaluates, gates
and publishes; the running service picks the release up without a restart; rollback works;
and a failed gate publishes nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from routenlp_ray.cli import main
from routenlp_ray.config import load_config, parse_config
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.loop.iteration import Iteration, LoopSettings
from routenlp_ray.releases import ReleaseStore
from routenlp_ray.tasks.data import load_examples, task_file
from routenlp_ray.telemetry import read_records
from tests.conftest import REPO_ROOT, tier_named
from tests.cpu.conftest import deploy_declaratively, stages_with_a_quality_drop, wait_for

pytestmark = pytest.mark.slow

APP = "loop"
PREFIX = "/loop"
TASKS = ["cs_intent", "legal_risk"]


@pytest.fixture(scope="module")
def app(serve_instance: int, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("loop")
    data = load_config(REPO_ROOT / "serve_config.local.yaml").model_dump(mode="json")
    data["storage"] = {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")}
    # The loop distils into the SmolLM2 student; the specialist tier has its own test.
    data["tiers"] = [t for t in data["tiers"] if t["name"] != "specialist"]
    tier_named(data, "frontier")["engine"]["records"] = [str(data_dir / t / "*.jsonl") for t in TASKS]
    tier_named(data, "smollm2")["limits"]["default_max_tokens"] = 12
    # The loop starts from the bare model here; continuing from a release is checked below.
    tier_named(data, "smollm2")["engine"]["adapter_path"] = None
    # The embedded default keeps SmolLM2 off the structured tasks; here it is the student for them.
    tier_named(data, "smollm2")["tasks"] = None
    # A threshold no answer can meet (a mean NLL is never negative): SmolLM2 is tried and escalates
    # everything, so the log is full of failures. (A tier with no threshold at all would be skipped.)
    data["cascade"].update({"thresholds_path": None, "default_threshold": -1.0})
    data["monitoring"]["enabled"] = False
    # One router replica, so the pid /healthz reports is the process that must not restart.
    data["server"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    data["releases"] = {"path": str(tmp_path / "releases"), "poll_interval_s": 1.0}
    store = ReleaseStore(tmp_path / "releases")
    baseline = ThresholdTable(version="baseline").save(tmp_path / "baseline.json")
    store.publish("baseline", thresholds=baseline)
    deploy_declaratively([{"name": APP, "route_prefix": PREFIX, "import_path": "deployments.builders:build_app",
                           "args": data}])
    yield {"base": f"http://127.0.0.1:{serve_instance}{PREFIX}", "config": data, "tmp": tmp_path, "store": store}


def health(app: dict[str, Any]) -> dict[str, Any]:
    return httpx.get(f"{app['base']}/healthz", timeout=10).json()


def tier_status() -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle("tier-smollm2", app_name=APP).release_status.remote().result()


def send_traffic(app: dict[str, Any], data_dir: Path) -> None:
    client = OpenAI(base_url=f"{app['base']}/v1", api_key="unused", max_retries=0)
    for task, n in (("cs_intent", 8), ("legal_risk", 4)):
        for example in load_examples(task_file(data_dir, task, "train"), limit=n, seed=1):
            client.chat.completions.create(
                model=f"routenlp/{task}", messages=[{"role": "user", "content": example.input}], max_tokens=12
            )


def settings() -> LoopSettings:
    return LoopSettings(
        budget_examples=6, eval_per_task=6, eval_tasks=TASKS, top_clusters=2, gate_tolerance=1.0,
        distill={"max_steps": 3, "batch_size": 2, "max_seq_len": 160, "checkpoint_every": 2, "learning_rate": 1e-3},
    )


def test_iteration_publishes_a_release_the_service_picks_up_and_rollback_restores(
    app: dict[str, Any], data_dir: Path
) -> None:
    wait_for(lambda: health(app).get("release") == "baseline", timeout_s=120)
    pid = health(app)["pid"]
    send_traffic(app, data_dir)
    config = parse_config(app["config"])
    iteration = Iteration(config, settings(), config.storage.log_uri, data_dir, app["tmp"] / "runs", "ci-1")
    result = iteration.run()

    report = result.report
    assert result.gate_passed and result.published == "loop-ci-1"
    assert report["mining"]["failures"] == 12 and report["budget"]["examples_per_student"] == 6
    # Same budget for both students: as many examples, as many steps.
    assert report["budget"]["untargeted_examples"] == 6
    assert set(report["training"]) == {"targeted", "untargeted"}
    assert all(report["training"][v]["steps"] == 3 for v in ("targeted", "untargeted"))
    for variant in ("base", "targeted", "untargeted"):
        assert set(report["evaluation"][variant]["per_task"]) == set(TASKS)
    # The cost improvements are each student's cost reduction over the current model's, and their ratio.
    base = report["evaluation"]["base"]["cost_reduction"]
    gain = {v: report["evaluation"][v]["cost_reduction"] - base for v in ("targeted", "untargeted")}
    improvement = report["cost_improvement"]
    assert improvement["targeted"] == pytest.approx(gain["targeted"])
    assert improvement["untargeted"] == pytest.approx(gain["untargeted"])
    if gain["untargeted"] > 0:
        assert improvement["targeted_over_untargeted"] == pytest.approx(gain["targeted"] / gain["untargeted"])
    else:
        assert improvement["targeted_over_untargeted"] is None
    assert (app["tmp"] / "runs" / "ci-1" / "clusters.md").exists()
    assert "| base |" in (app["tmp"] / "runs" / "ci-1" / "report.md").read_text()

    # The running service follows the release: router thresholds and the tier's adapter, same pid.
    wait_for(lambda: health(app).get("release") == "loop-ci-1", timeout_s=180)
    assert health(app)["thresholds_version"] == "loop-ci-1" and health(app)["pid"] == pid
    wait_for(lambda: tier_status()["release"] == "loop-ci-1", timeout_s=180)
    assert tier_status()["adapter_path"].endswith("loop-ci-1/adapters/smollm2")
    client = OpenAI(base_url=f"{app['base']}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="routenlp/cs_intent", messages=[{"role": "user", "content": "my card has not arrived"}], max_tokens=8
    )
    assert answer.model_extra["routing"]["thresholds_version"] == "loop-ci-1"

    # Running the same run id again changes nothing: every stage is cached and the version exists.
    again = Iteration(config, settings(), config.storage.log_uri, data_dir, app["tmp"] / "runs", "ci-1").run()
    assert again.published == "loop-ci-1" and app["store"].versions() == ["baseline", "loop-ci-1"]

    # The next iteration starts from this release: its students continue the released adapter.
    runs = app["tmp"] / "runs"
    following = Iteration(config, settings(), config.storage.log_uri, data_dir, runs, "ci-next")
    released = str(app["store"].get("loop-ci-1").adapter_for("smollm2"))
    assert following.starts_from == {"release": "loop-ci-1", "artifact": released}
    assert following.student.engine.adapter_path == released
    for stage in ("mine", "training_sets"):
        (runs / "ci-next" / "stages").mkdir(parents=True, exist_ok=True)
        shutil.copy2(runs / "ci-1" / "stages" / f"{stage}.json", runs / "ci-next" / "stages" / f"{stage}.json")
    trained = following.train(following.training_sets(following.mine()))
    assert {trained[v]["init_adapter"] for v in ("targeted", "untargeted")} == {str(Path(released).resolve())}
    assert iteration.starts_from == {"release": "baseline", "artifact": None}

    # One command rolls back; the service follows, the tier drops the adapter.
    assert main(["release", "rollback", "--path", str(app["tmp"] / "releases")]) == 0
    wait_for(lambda: health(app).get("release") == "baseline", timeout_s=180)
    wait_for(lambda: tier_status()["release"] == "baseline", timeout_s=180)
    assert tier_status()["adapter_path"] is None and health(app)["pid"] == pid
    events = read_records(config.storage.log_uri, "events")
    applied = [e["after"]["release"] for e in events if e.get("event") == "release_applied"]
    assert applied[-3:] == ["baseline", "loop-ci-1", "baseline"]


def test_a_failed_gate_publishes_nothing(app: dict[str, Any], data_dir: Path) -> None:
    runs = app["tmp"] / "runs"
    stages_with_a_quality_drop(runs, "ci-1", "ci-2", "cs_intent")
    before = app["store"].current_version()
    config = parse_config(app["config"])
    strict = settings().model_copy(update={"gate_tolerance": 0.0})
    result = Iteration(config, strict, config.storage.log_uri, data_dir, runs, "ci-2").run()
    assert not result.gate_passed and result.published is None
    assert any("cs_intent: quality retention 0.500 < current 1.000" in r for r in result.gate_reasons)
    assert app["store"].current_version() == before and "loop-ci-2" not in app["store"].versions()
    assert health(app)["release"] == before
    assert "Gate: failed" in (runs / "ci-2" / "report.md").read_text()
