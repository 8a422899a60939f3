"""The documented path (docs/operations.md): `serve run serve_config.local.yaml`, then the official openai client."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from routenlp_ray.cli import serve_executable
from routenlp_ray.telemetry import read_records
from tests.conftest import REPO_ROOT
from tests.cpu.conftest import free_port

pytestmark = pytest.mark.slow


def test_serve_run_of_the_embedded_default_answers_the_openai_client(tmp_path: Path, data_dir: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "serve_config.local.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config_file = tmp_path / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(ROUTENLP_LOG_URI=str(tmp_path / "log"), ROUTENLP_DATA=str(data_dir))
    process = subprocess.Popen(
        [serve_executable(), "run", str(config_file)], cwd=REPO_ROOT, env=env,
        stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("serve run did not become healthy:\n" + (tmp_path / "serve.log").read_text()[-3000:])

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        response = client.chat.completions.create(
            model="routenlp/chat", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=6
        )
        assert response.choices[0].message.content
        routing = response.model_extra["routing"]
        # The specialist does not serve chat: skipped at no cost, and SmolLM2 answers first.
        assert [a["status"] for a in routing["attempts"]][0] == "skipped"
        assert routing["attempts"][0]["tier"] == "specialist" and routing["attempts"][0]["cost_usd"] == 0
        assert routing["attempts"][1]["tier"] == "smollm2"
        assert routing["attempts"][1]["completion_tokens"] >= 1
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: serve run shuts the app down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert response.id in {r["id"] for r in read_records(str(tmp_path / "log"), "queries")}
