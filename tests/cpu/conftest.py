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
