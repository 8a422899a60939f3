"""Fixtures that start real Ray and Ray Serve on this machine's CPUs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import DATA_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def serve_instance() -> Iterator[int]:
    """A fresh Ray + Serve for the module; yields the HTTP port."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="routenlp-tests")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA_DIR / "cs_intent" / "validation.jsonl").is_file():
        pytest.skip(f"shared evaluation data not found at {DATA_DIR} (set ROUTENLP_DATA)")
    return DATA_DIR


def deploy_declaratively(applications: list[dict], timeout_s: float = 300) -> None:
    """Apply a serve config's ``applications`` the way ``serve deploy`` does.

    Declarative deploys are what make ``user_config``-only changes lightweight: Serve calls
    ``reconfigure()`` on the running replicas instead of replacing them.
    """
    import time

    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))
    deadline = time.time() + timeout_s
    names = {app["name"] for app in applications}
    while time.time() < deadline:
        statuses = {name: serve.status().applications.get(name) for name in names}
        if all(s is not None and s.status == "RUNNING" for s in statuses.values()):
            return
        failed = {n: s.message for n, s in statuses.items() if s is not None and s.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"deploy failed: {failed}")
        time.sleep(0.5)
    raise TimeoutError(f"applications {sorted(names)} not RUNNING after {timeout_s}s")


def wait_for(condition, timeout_s: float = 60.0, every_s: float = 0.5) -> None:
    """Poll ``condition`` until it is true; fail naming the timeout."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def prometheus_text(*required: str, timeout_s: float = 60.0) -> str:
    """Ray's Prometheus endpoint text, once every ``required`` name shows up (or the timeout passes)."""
    import time

    import httpx
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    deadline, text = time.time() + timeout_s, ""
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in text for name in required):
            break
        time.sleep(2)
    return text


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Reuse a running Ray; otherwise start one for this module (Ray Train jobs) and stop it afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="routenlp-tests")
    try:
        yield
    finally:
        ray.shutdown()


def stages_with_a_quality_drop(runs, source: str, target: str, task: str) -> None:
    """Copy run ``source``'s finished stages to run ``target``, with the targeted student's quality on ``task`` halved.

    Running ``target`` then reuses every stage and reaches the gate with a student that lost quality.
    """
    import json
    import shutil

    shutil.copytree(runs / source / "stages", runs / target / "stages")
    path = runs / target / "stages" / "evaluate.json"
    evaluation = json.loads(path.read_text())
    evaluation["base"]["per_task"][task]["quality_retention"] = 1.0
    evaluation["targeted"]["per_task"][task]["quality_retention"] = 0.5
    path.write_text(json.dumps(evaluation))


def escalating_default(tmp, data_dir, tasks: list[str]) -> dict:
    """The embedded default on ``tasks`` with a log in ``tmp``, and specialist thresholds no answer meets.

    The specialist then escalates every query, so the log is all failures to mine.
    """
    from routenlp_ray.config import load_config
    from tests.conftest import REPO_ROOT, tier_named

    data = load_config(REPO_ROOT / "serve_config.local.yaml").with_absolute_paths(REPO_ROOT).model_dump(mode="json")
    data["storage"] = {"log_uri": str(tmp / "log"), "spool_dir": str(tmp / "spool")}
    tier_named(data, "specialist")["tasks"] = tasks  # loads only these heads
    tier_named(data, "specialist")["engine"]["data_dir"] = str(data_dir)
    tier_named(data, "frontier")["engine"]["records"] = [str(data_dir / t / "*.jsonl") for t in tasks]
    data["cascade"].update({"thresholds_path": None, "thresholds": {"specialist": {t: 1e-12 for t in tasks}}})
    data["monitoring"]["enabled"] = False
    return data
