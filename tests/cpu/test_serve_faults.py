"""Failure handling on real Ray Serve: broken and slow tiers, bad requests, auth, replica death."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from routenlp_ray.telemetry import read_records
from tests.cpu.conftest import deploy_declaratively, free_port

pytestmark = pytest.mark.slow

API_KEY = "test-key-123"
PREFIX = "/faults"


class SlowChatHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers only after a long pause."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(3.0)
        body = json.dumps({"id": "slow", "object": "chat.completion", "created": 0, "model": "slow", "choices": []})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def app(serve_instance: int, slow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("faults")
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"task": "chat", "input": "hello", "reference": "Hello from the frontier."}) + "\n")
    (tmp_path / "keys").write_text(API_KEY + "\n")
    small = {"num_cpus": 0.1}
    args = {
        "tiers": [
            {
                "name": "broken",  # nothing listens on this port: connection refused
                "engine": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m",
                           "api_key_env": None, "max_retries": 0, "timeout_s": 5},
                "pricing": {"input_per_1m": 0.1, "output_per_1m": 0.1},
                "resources": small,
            },
            {
                "name": "slow",
                "engine": {"type": "openai", "base_url": slow_server, "model": "m", "api_key_env": None,
                           "max_retries": 0, "timeout_s": 30},
                "pricing": {"input_per_1m": 0.5, "output_per_1m": 0.5},
                "resources": small,
                "timeout_s": 0.5,
            },
            {
                "name": "frontier",
                "engine": {"type": "replay", "records": [str(replay)]},
                "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0},
                "resources": small,
            },
        ],
        "tasks": [{"name": "chat", "metric": "none"}],
        "cascade": {"default_threshold": 100.0},
        "storage": {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")},
        "server": {"api_keys_file": str(tmp_path / "keys"), "max_request_bytes": 4096, "max_input_chars": 200,
                   "default_task": "chat",
                   "resources": small},
    }
    deploy_declaratively(
        [{"name": "faults", "route_prefix": PREFIX, "import_path": "deployments.builders:build_app", "args": args}]
    )
    yield {"base": f"http://127.0.0.1:{serve_instance}{PREFIX}", "log": str(tmp_path / "log")}


def post(app: dict[str, Any], path: str, content: bytes, key: str | None = API_KEY) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{app['base']}{path}", content=content, headers=headers, timeout=60)


def chat_json(text: str = "hello", model: str = "routenlp/chat") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


def test_broken_and_slow_tiers_escalate_instead_of_failing(app: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{app['base']}/v1", api_key=API_KEY, max_retries=0)
    response = client.chat.completions.create(model="routenlp/chat", messages=[{"role": "user", "content": "hello"}])
    attempts = response.model_extra["routing"]["attempts"]
    assert [(a["tier"], a["status"]) for a in attempts] == [
        ("broken", "error"), ("slow", "timeout"), ("frontier", "accepted")
    ]
    assert "Connection" in attempts[0]["error"] or "connect" in attempts[0]["error"].lower()
    assert response.choices[0].message.content == "Hello from the frontier."


def test_every_tier_failing_is_a_503_that_names_each_tier(app: dict[str, Any]) -> None:
    response = post(app, "/v1/chat/completions", chat_json("no recording exists for this input"))
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "broken:" in message and "slow:" in message and "ReplayMissError" in message
    failed = [r for r in read_records(app["log"], "queries") if r["status"] == "failed"]
    assert failed and failed[-1]["input"] == "no recording exists for this input"


@pytest.mark.parametrize(
    ("content", "key", "status", "message"),
    [
        (b"{not json", API_KEY, 400, "not valid JSON"),
        (json.dumps({"model": "routenlp/chat"}).encode(), API_KEY, 400, "'messages' is required"),
        (chat_json(model="routenlp/translate"), API_KEY, 404, "unknown task 'translate'; known models: routenlp/chat"),
        (chat_json("x" * 300), API_KEY, 413, "input is 300 characters; the limit is 200"),
        (chat_json("x" * 5000), API_KEY, 413, "the limit is 4096 bytes"),
        (chat_json(), None, 401, "missing API key"),
        (chat_json(), "wrong-key", 401, "invalid API key"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_are_logged(
    app: dict[str, Any], content: bytes, key: str | None, status: int, message: str
) -> None:
    response = post(app, "/v1/chat/completions", content, key=key)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]
    rejected = [e for e in read_records(app["log"], "events") if e.get("kind") == "rejected"]
    assert any(message in e["error"] and e["http_status"] == status for e in rejected)
    assert httpx.get(f"{app['base']}/healthz").json() == {"status": "ok"}  # no details without a key


def test_openai_client_sees_the_error_message(app: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{app['base']}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client.models.list()


def test_acknowledged_requests_survive_a_killed_router_replica(app: dict[str, Any]) -> None:
    import ray

    acknowledged = []
    for _ in range(10):
        response = post(app, "/v1/chat/completions", chat_json())
        assert response.status_code == 200
        acknowledged.append(response.json()["id"])
    routers = [
        a for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "faults#router#" in a["name"]
    ]
    assert len(routers) == 2  # the default: a second replica answers while the first is replaced
    router = routers[0]
    ray.kill(ray.get_actor(router["name"], namespace="serve"), no_restart=True)
    logged = {r["id"] for r in read_records(app["log"], "queries")}
    assert set(acknowledged) <= logged
    # Serve replaces the replica and the service keeps answering.
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if post(app, "/v1/chat/completions", chat_json()).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        pytest.fail("the router did not come back after its replica was killed")
