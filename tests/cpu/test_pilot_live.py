"""`routenlp bench pilot-live` on a tiny plan: `serve run`, the openai client, `ray job submit` and hot swaps.

A real Ray cluster is started with `ray start --head` (the job server needs it). One seed of the
targeted arm runs four short weeks: cs_intent from week 0 (a third of its intents new from week 1),
legal_risk, which no cheap tier serves at week 0, from week 1. After each week the loop runs as a
Ray job while the next week's traffic flows; what it publishes must be served without a failed
request, and the router must log the versions it applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray.bench.pilot import PilotSettings
from routenlp_ray.bench.pilot_live import LiveCluster, live_markdown, run_live_arm
from routenlp_ray.bench.pilot_plan import DriftPlan
from routenlp_ray.config import load_config
from tests.conftest import REPO_ROOT
from tests.cpu.conftest import free_port

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    gcs, dashboard = free_port(), free_port()
    # Ray's default token auth, stated for the CLIs this test starts (`ray start`, `serve run`, `ray job
    # submit`), which otherwise pick a mode of their own. This process is not told: its `ray.init` enables
    # token auth itself when the token exists. Opting this process out instead (RAY_AUTH_MODE=disabled) left
    # Ray's cached config disabled after the test, and every later `ray.init` in the session started a
    # GCS that refused this process (CI: 49 errors in the serve tests that followed).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}
    subprocess.run([os.path.join(BIN, "ray"), "get-auth-token", "--generate"], check=True, env=env,
                   capture_output=True, timeout=60)  # what a first local ray.init does; a no-op when one exists
    subprocess.run([os.path.join(BIN, "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=4",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=180)
    try:
        yield LiveCluster(address=f"127.0.0.1:{gcs}", dashboard_url=f"http://127.0.0.1:{dashboard}",
                          http_port=free_port(), bin_dir=BIN)
    finally:
        ray.shutdown()
        subprocess.run([os.path.join(BIN, "ray"), "stop", "--force"], check=False, env=env, capture_output=True,
                       timeout=180)


@pytest.fixture(scope="module")
def live(cluster: LiveCluster, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pilot-live")
    plan = DriftPlan.model_validate({"name": "tiny", "tasks": ["cs_intent", "legal_risk"], "drifts": [
        {"task": "cs_intent", "label_share": 0.3, "from_week": 1},
        {"task": "legal_risk", "whole_task": True, "from_week": 1}]})
    settings = PilotSettings(weeks=4, queries_per_week=60, seeds=[0], arms=["targeted"], base_per_task=150,
                             calibration_per_task=60, eval_per_task=10, budget_examples=40, n_clusters=4)
    config = load_config(REPO_ROOT / "serve_config.local.yaml").with_absolute_paths(str(REPO_ROOT))
    report = run_live_arm(config, plan, data_dir, tmp / "work", settings, cluster, seed=0, log=lambda line: None)
    return {"report": report, "tmp": tmp}


def test_every_request_was_answered_while_releases_were_swapped_in(live: dict[str, Any]) -> None:
    report = live["report"]
    weeks = report["weeks"]
    assert len(weeks) == 4 and report["failed_requests"] == 0, [w["traffic"]["failures"] for w in weeks]
    assert all(w["traffic"]["sent"] >= 60 for w in weeks)
    outcomes = [w["loop_of_previous_week"] for w in weeks[1:]]
    assert all(o["job_rc"] in (0, 2) for o in outcomes), outcomes  # 2: the gate refused, nothing published
    published = [o for o in outcomes if o["outcome"] == "published"]
    assert published, outcomes
    for outcome, week in zip(outcomes, weeks[1:]):
        if outcome["outcome"] == "published":
            # The router took the release up while that week's traffic flowed, and answers were decided under it.
            assert outcome["router_serves_it"], outcome
            assert week["traffic"]["releases"].get(outcome["published"], 0) > 0, week["traffic"]["releases"]
    applied = [e["after"]["release"] for e in report["events"]]
    assert applied[0] == "week-00" and [o["published"] for o in published] == applied[1:]


def test_a_task_given_its_first_head_by_a_job_is_answered_by_the_specialist(live: dict[str, Any]) -> None:
    report = live["report"]
    with_head = [e for e in report["events"] if "legal_risk" in e["after"]["tier_tasks"].get("specialist", [])]
    assert with_head, report["events"]
    last = report["weeks"][-1]["traffic"]["per_task_answered_by"]
    assert last["legal_risk"].get("specialist", 0) > 0, last
    markdown = live_markdown(report, "tiny", "routenlp bench pilot-live (test)")
    assert "**Failed requests: 0**" in markdown
