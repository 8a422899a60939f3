"""Issue #13 on real Ray Serve: keys never reach Ray's files, every path but liveness needs one,
and hostile requests through Serve's proxy get no 5xx.

Keys come from a file and from the environment, read inside the router replica. After an
authenticated run, every file under Ray's session folder (logs of the controller, proxy,
replicas, raylet and GCS) and the serve config Ray reports are searched for them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.cpu.conftest import deploy_declaratively, wait_for
from tests.hostile import generate

pytestmark = pytest.mark.slow

FILE_KEY = "sk-file-7d1e9c2a4b6f8e0d3c5a7b9e1f2d4c6a"
ENV_KEY = "sk-env-0a2c4e6f8b1d3f5a7c9e2b4d6f8a1c3e"
PREFIX = "/safety"


@pytest.fixture(scope="module")
def env_key() -> Iterator[str]:
    """Set before Ray starts, so the replicas (children of this driver's local Ray) inherit it."""
    old = os.environ.get("ROUTENLP_API_KEYS")
    os.environ["ROUTENLP_API_KEYS"] = ENV_KEY
    yield ENV_KEY
    if old is None:
        os.environ.pop("ROUTENLP_API_KEYS", None)
    else:
        os.environ["ROUTENLP_API_KEYS"] = old


@pytest.fixture(scope="module")
def app(env_key: str, serve_instance: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("safety")
    replay = tmp_path / "replay.jsonl"
    # Every input the hostile generator sends, under every task, so a valid request is a 200 (a miss is a 503).
    replay.write_text("".join(
        json.dumps({"task": task, "input": text, "reference": "Hello from the frontier."}) + "\n"
        for task in ("chat", "cs_intent") for text in ("hello", "where is my new card?")
    ))
    (tmp_path / "keys").write_text(f"# router keys\n{FILE_KEY}\n")
    small = {"num_cpus": 0.1}
    args = {
        "tiers": [{"name": "frontier", "engine": {"type": "replay", "records": [str(replay)]},
                   "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": small}],
        "tasks": [{"name": "chat", "metric": "none"}, {"name": "cs_intent", "metric": "macro_f1"}],
        "storage": {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")},
        "server": {"api_keys_file": str(tmp_path / "keys"), "default_task": "chat", "resources": small},
    }
    deploy_declaratively(
        [{"name": "safety", "route_prefix": PREFIX, "import_path": "deployments.builders:build_app", "args": args}]
    )
    yield {"base": f"http://127.0.0.1:{serve_instance}{PREFIX}", "log": str(tmp_path / "log")}


def test_keys_from_a_file_and_the_environment_work_through_the_openai_client(app: dict[str, Any]) -> None:
    for key in (FILE_KEY, ENV_KEY):
        client = openai.OpenAI(base_url=f"{app['base']}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="routenlp/chat", messages=[{"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content == "Hello from the frontier."
        assert [m.id for m in client.models.list()] == ["routenlp/chat", "routenlp/cs_intent"]
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=f"{app['base']}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert err.value.code == "invalid_api_key"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/v1/models", "/v1/responses"])
def test_every_path_but_liveness_needs_a_key(app: dict[str, Any], path: str) -> None:
    response = httpx.get(f"{app['base']}{path}", timeout=30)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{app['base']}/healthz", timeout=30).json() == {"status": "ok"}


def test_unknown_paths_and_methods_answer_in_the_openai_shape_through_serve(app: dict[str, Any]) -> None:
    auth = {"authorization": f"Bearer {FILE_KEY}"}
    missing = httpx.post(f"{app['base']}/v1/responses", json={}, headers=auth, timeout=30)
    assert missing.status_code == 404 and "Invalid URL (POST " in missing.json()["error"]["message"]
    assert "/v1/responses" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{app['base']}/v1/chat/completions", headers=auth, timeout=30)
    assert wrong.status_code == 405 and "accepts POST" in wrong.json()["error"]["message"]


def test_a_burst_of_hostile_requests_through_serve_gets_no_5xx(app: dict[str, Any]) -> None:
    headers = {"authorization": f"Bearer {FILE_KEY}", "content-type": "application/json"}
    served = httpx.post(f"{app['base']}/v1/chat/completions", headers=headers, timeout=60,
                        json={"model": "routenlp/chat", "messages": [{"role": "user", "content": "hello"}]})
    statuses = []
    with httpx.Client(base_url=app["base"], headers=headers, timeout=60) as client:
        for case in generate(120, seed=1313, response_ids=[served.json()["id"]]):
            response = client.request(case.method, case.path, content=case.body)
            statuses.append(response.status_code)
            assert response.status_code < 500, f"{response.status_code} for {case.describe()}: {response.text[:300]}"
    assert statuses.count(400) >= 30
    assert httpx.get(f"{app['base']}/healthz", headers=headers, timeout=30).json()["status"] == "ok"


def test_no_key_appears_under_rays_session_folder_or_in_the_serve_config(app: dict[str, Any]) -> None:
    import ray
    from ray.serve.context import _get_global_client

    # Served, authenticated traffic first, so every process has had its chance to log.
    client = openai.OpenAI(base_url=f"{app['base']}/v1", api_key=FILE_KEY, max_retries=0)
    client.chat.completions.create(model="routenlp/chat", messages=[{"role": "user", "content": "hello"}])
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = session / "logs"
    wait_for(lambda: any(p.name.startswith("controller_") for p in logs.rglob("*")), timeout_s=30)
    searched, leaks, args_seen = 0, [], False
    key_file = str(Path(app["log"]).parent / "keys").encode()
    for path in session.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue  # sockets and files removed while walking
        searched += 1
        args_seen = args_seen or key_file in data
        leaks += [f"{path}: {name}" for name, key in (("file", FILE_KEY), ("env", ENV_KEY)) if key.encode() in data]
    assert searched > 20 and not leaks, leaks
    # The search can see what travels in the application args (the key file's path does): a key there would show.
    assert args_seen
    details = json.dumps(_get_global_client().get_serve_details(), default=str)
    assert "api_keys_file" in details  # the config is there: only the key is not
    assert FILE_KEY not in details and ENV_KEY not in details
    for stream in ("queries", "feedback", "events"):
        for file in Path(app["log"], stream).glob("*.jsonl"):
            text = file.read_text()
            assert FILE_KEY not in text and ENV_KEY not in text, file


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b'{"model": "routenlp/chat", "messages": ' + b"[" * 100_000, 400, "nests JSON deeper than"),
        (b'{"model": "routenlp/chat", "messages": [{"role": "user", "content": "hi \\ud800"}]}', 400,
         "'messages.0.content' holds an unpaired UTF-16 surrogate"),
        (b'{"model": "routenlp/chat", "max_tokens": true, "messages": [{"role": "user", "content": "hello"}]}', 400,
         "'max_tokens': Input should be a valid integer"),
    ],
)
def test_the_issues_bad_bodies_are_logged_4xx_through_serve(
    app: dict[str, Any], raw: bytes, status: int, message: str
) -> None:
    from routenlp_ray.telemetry import read_records

    headers = {"authorization": f"Bearer {FILE_KEY}", "content-type": "application/json"}
    response = httpx.post(f"{app['base']}/v1/chat/completions", content=raw, headers=headers, timeout=60)
    assert response.status_code == status and message in response.json()["error"]["message"]
    wait_for(lambda: any(message in e.get("error", "") for e in read_records(app["log"], "events")), timeout_s=30)


def test_a_chunked_body_through_serve_is_refused_after_about_the_limit(app: dict[str, Any]) -> None:
    sent = 0

    def thirty_megabytes() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(30 * 16):
            sent += 65_536
            yield b" " * 65_536

    headers = {"authorization": f"Bearer {FILE_KEY}", "content-type": "application/json"}
    try:
        response = httpx.post(f"{app['base']}/v1/chat/completions", content=thirty_megabytes(), headers=headers,
                              timeout=120)
    except httpx.HTTPError:
        pytest.fail(f"the connection broke after {sent} bytes instead of answering 413")
    assert response.status_code == 413
    # The router says how much it had read when it refused: the limit, not the 30 MB sent.
    message = response.json()["error"]["message"]
    refused_after = int(message.split("refused after ")[1].split(")")[0])
    # Serve's proxy hands the body over in its own chunk sizes (about 1.12 MB read when last run).
    # It still accepts all that the client sends: only the router's own reading is bounded here.
    assert 1_000_000 < refused_after < 2_000_000, message
