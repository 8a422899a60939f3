"""``routenlp serve``: run a serve config on a local, loopback-only Ray, and stop cleanly on a signal.

What it does that ``serve run`` does not:

- Every port Ray opens (GCS, raylet, dashboard, the Prometheus metrics endpoint) listens on
  127.0.0.1. Ray picks the node address itself and exports metrics on all interfaces unless
  that address is loopback; Ray's own single-node switch (the one it sets on macOS and
  Windows) makes it loopback.
- Ctrl-C and SIGTERM stop Serve and Ray and exit 0 with one line, instead of a stack dump
  and a signal exit status.
- It prints one line when the application is RUNNING, and one when ``/readyz`` says every
  tier is ready.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from routenlp_ray._exceptions import ConfigError

# Ray's switch for a machine that is not part of a cluster: the node address becomes 127.0.0.1,
# and with it every server Ray starts, metrics included.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def read_serve_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read serve config {str(file)!r}: {exc}") from None
    if not isinstance(data, dict) or not data.get("applications"):
        raise ConfigError(f"serve config {str(file)!r} has no 'applications'")
    return data


class StopSignal:
    """Turns SIGINT and SIGTERM into an event the main loop waits on (the first one only)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name is None:
            self.name = signal.Signals(signum).name
        self.event.set()


def serve_locally(
    config_path: str,
    stop: StopSignal | None = None,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    deploy_timeout_s: float = 900.0,
) -> int:
    """Deploy ``config_path`` on a new local Ray; block until a stop signal; return the exit code."""
    os.environ.update(LOOPBACK_ONLY_ENV)  # before Ray starts, so its servers inherit it
    data = read_serve_config(config_path)
    stop = stop or StopSignal()
    stop.install()

    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    http = data.get("http_options") or {}
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    ray.init(logging_level="WARNING", configure_logging=True)
    stop.install()  # again: ray.init sets its own SIGTERM handler, which exits with the signal number
    try:
        serve.start(http_options={"host": host, "port": port}, proxy_location=data.get("proxy_location", "HeadOnly"))
        schema = ServeDeploySchema.model_validate(
            {k: v for k, v in data.items() if k not in ("http_options", "proxy_location", "grpc_options")}
        )
        _get_global_client().deploy_apps(schema)
        names = [app["name"] for app in data["applications"]]
        state = _wait_running(names, stop, deploy_timeout_s)
        if state == "running":
            say(f"routenlp: {', '.join(names)} running on http://{host}:{port}/v1 "
                f"(live: /healthz, ready: /readyz); Ctrl-C stops it")
            _wait_ready(f"http://{host}:{port}", stop, say)
            stop.event.wait()
        elif state != "stopped":
            say(f"routenlp: deploy failed: {state}")
            return 1
    finally:
        # Ignore further signals while stopping: a second Ctrl-C must not leave Ray half shut.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        # Replicas and the controller narrate their own shutdown through the driver's streams:
        # dozens of lines for one expected event. Drop them; the one line below says it.
        streams, sys.stdout, sys.stderr = (sys.stdout, sys.stderr), open(os.devnull, "w"), open(os.devnull, "w")
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr = streams
    say(f"routenlp: stopped on {stop.name or 'request'}; Serve and Ray shut down cleanly")
    return 0


def _wait_running(names: list[str], stop: StopSignal, timeout_s: float) -> str:
    """'running', 'stopped' (a signal came first) or the failure message."""
    from ray import serve

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if stop.event.is_set():
            return "stopped"
        apps = serve.status().applications
        statuses = {name: apps.get(name) for name in names}
        failed = {n: s.message for n, s in statuses.items() if s is not None and s.status == "DEPLOY_FAILED"}
        if failed:
            return "; ".join(f"{n}: {m}" for n, m in failed.items())
        if all(s is not None and s.status == "RUNNING" for s in statuses.values()):
            return "running"
        stop.event.wait(1.0)
    return f"not RUNNING after {timeout_s:.0f}s"


def _wait_ready(base_url: str, stop: StopSignal, say: Callable[[str], None], timeout_s: float = 300.0) -> None:
    """One line once /readyz says ready (keys are read from the environment as the router does)."""
    import httpx

    keys = [k.strip() for k in os.environ.get("ROUTENLP_API_KEYS", "").split(",") if k.strip()]
    headers = {"authorization": f"Bearer {keys[0]}"} if keys else {}
    deadline = time.time() + timeout_s
    while time.time() < deadline and not stop.event.is_set():
        try:
            if httpx.get(f"{base_url}/readyz", headers=headers, timeout=10).status_code == 200:
                say(f"routenlp: ready ({base_url}/readyz)")
                return
        except httpx.HTTPError:
            pass
        stop.event.wait(2.0)


def main(config_path: str) -> int:  # pragma: no cover - thin wrapper used by the CLI
    try:
        return serve_locally(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
