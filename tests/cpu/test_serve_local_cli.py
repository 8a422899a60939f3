"""``routenlp serve``: a loopback-only local Ray, a quiet console, readiness, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.cpu.conftest import free_port

pytestmark = pytest.mark.slow

# Ray's own servers; Serve replicas' inter-deployment ports are Ray core's and not covered here.
RAY_SERVERS = ("gcs_server", "raylet", "dashboard/agent.py", "dashboard/dashboard.py")


def listening(root: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening socket of Ray's servers under ``root``."""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if not any(name in cmd for name in RAY_SERVERS):
                continue
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_routenlp_serve_binds_loopback_reports_ready_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"task": "chat", "input": "hello", "reference": "Hello there."}) + "\n")
    port = free_port()
    small = {"num_cpus": 0.1}
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "cli", "route_prefix": "/", "import_path": "deployments.builders:build_app", "args": {
            "tiers": [{"name": "frontier", "engine": {"type": "replay", "records": [str(replay)]},
                       "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": small}],
            "tasks": [{"name": "chat", "metric": "none"}],
            "storage": {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")},
            "server": {"default_task": "chat", "resources": small},
        }}],
    }
    config_file = tmp_path / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "routenlp_ray.cli", "serve", str(config_file)], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.time() + 240
        assert proc.stdout is not None
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("routenlp: ready"):
                break
        assert lines and lines[-1].startswith("routenlp: ready"), "".join(lines[-30:])
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz", timeout=30).json()["status"] == "ready"
        # A replay miss is an expected event: a 503 for the client, no traceback on the console.
        miss = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                          json={"model": "routenlp/chat", "messages": [{"role": "user", "content": "never recorded"}]})
        assert miss.status_code == 503
        sockets = listening(proc.pid)
        assert sockets, "found no Ray server sockets"
        assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip, _ in sockets), sockets
        time.sleep(2)  # let the replicas' log lines reach the console
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    final = [line for line in output.splitlines() if line.strip()][-1]
    assert final == "routenlp: stopped on SIGINT; Serve and Ray shut down cleanly", output[-2000:]
