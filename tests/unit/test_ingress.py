"""The router ingress as a plain class, without Ray: its routes, the request gate and the live artifacts.

The tier and monitor handles are fakes with the ``.method.remote(...)`` shape of Serve handles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from deployments.router import RouterIngress
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.telemetry import read_records
from tests.conftest import small_config_dict


class Method:
    def __init__(self, function: Any) -> None:
        self.remote = function


class FakeTierHandle:
    def __init__(self, text: str, logprobs: list[float] | None) -> None:
        async def generate(request: GenerationRequest) -> GenerationResult:
            return GenerationResult(text, logprobs, prompt_tokens=100, completion_tokens=10, latency_ms=1.0)

        self.generate = Method(generate)


class Sent:
    """A response that is under way already, as ``.remote()`` returns: awaiting it is optional."""

    def __await__(self):
        return iter(())


class FakeMonitorHandle:
    def __init__(self) -> None:
        self.adopted: list[str] = []
        self.submitted: list[dict[str, Any]] = []

        def adopt_now(table: dict[str, Any]) -> Sent:
            self.adopted.append(table["version"])  # recorded on the call, as .remote() sends at once
            return Sent()

        async def submit(payload: dict[str, Any]) -> int:
            self.submitted.append(payload)
            return 0

        async def current(known_version: str | None) -> dict[str, Any] | None:
            return None

        async def audit_rates() -> dict[str, float]:
            return {}

        self.adopt, self.submit, self.current = Method(adopt_now), Method(submit), Method(current)
        self.audit_rates = Method(audit_rates)


def make_ingress(tmp_path: Path, replay_file: Path, monitor: FakeMonitorHandle | None = None, **overrides: Any):
    config = small_config_dict(tmp_path, replay_file, **overrides)
    tiers = {"cheap": FakeTierHandle("card_arrival", [-0.1]), "frontier": FakeTierHandle("big", None)}
    ingress = RouterIngress(config, tiers, use_ray_metrics=False, monitor_handle=monitor)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.build_asgi_app()), base_url="http://router")
    return ingress, client


CHAT = {"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "where is my new card?"}]}


async def test_reconfigure_reaches_the_answers_health_and_the_monitor(tmp_path: Path, replay_file: Path) -> None:
    monitor = FakeMonitorHandle()
    ingress, client = make_ingress(tmp_path, replay_file, monitor, monitoring={"enabled": True})
    async with client:
        first = (await client.post("/v1/chat/completions", json=CHAT)).json()
        assert first["routing"]["answered_by"] == "frontier"  # no threshold: the cheap tier is skipped
        artifact = ThresholdTable(version="cal-9", thresholds={"cheap": {"cs_intent": 1.0}}).save(tmp_path / "t.json")
        ingress.reconfigure({"thresholds_path": str(artifact)})
        assert monitor.adopted == ["cal-9"]
        second = (await client.post("/v1/chat/completions", json=CHAT)).json()
        assert second["routing"]["answered_by"] == "cheap" and second["routing"]["thresholds_version"] == "cal-9"
        health = (await client.get("/healthz")).json()
        assert (health["thresholds_version"], health["policy_version"], health["release"]) == (
            "cal-9", "cheapest", None
        )
    ingress.live._poller.cancel()
    ingress.query_log.close()
    events = read_records(str(tmp_path / "log"), "events")
    assert [e["event"] for e in events] == ["reconfigure"]


async def test_the_gate_refuses_before_routing(tmp_path: Path, replay_file: Path) -> None:
    (tmp_path / "keys").write_text("k\n")
    ingress, client = make_ingress(
        tmp_path, replay_file,
        server={"api_keys_file": str(tmp_path / "keys"), "max_request_bytes": 2048, "max_input_chars": 10},
    )
    auth = {"authorization": "Bearer k"}
    async with client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 401
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/v1/models", headers=auth)).status_code == 200
        too_big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        response = await client.post("/v1/chat/completions", json=too_big, headers=auth)
        assert response.status_code == 413 and "the limit is 2048 bytes" in response.json()["error"]["message"]
        response = await client.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert response.status_code == 413 and "the limit is 10" in response.json()["error"]["message"]
    ingress.query_log.close()
    rejected = [e for e in read_records(str(tmp_path / "log"), "events") if e.get("kind") == "rejected"]
    assert [e["http_status"] for e in rejected] == [401, 401, 413, 413]


async def test_routing_headers_trace_ids_and_models_retrieve(tmp_path: Path, replay_file: Path) -> None:
    (tmp_path / "keys").write_text("k\n")
    ingress, client = make_ingress(tmp_path, replay_file, server={"api_keys_file": str(tmp_path / "keys")})
    auth = {"authorization": "Bearer k"}
    async with client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers={**auth, "x-request-id": "abc-1"})
        body, headers = response.json(), response.headers
        assert headers["x-routenlp-response-id"] == body["id"] and headers["x-routenlp-request-id"] == "abc-1"
        assert headers["x-routenlp-answered-by"] == body["routing"]["answered_by"] == "frontier"
        assert float(headers["x-routenlp-cost-usd"]) == body["routing"]["cost_usd"] > 0
        assert headers["x-routenlp-thresholds-version"] == body["routing"]["thresholds_version"]
        model = await client.get("/v1/models/routenlp/cs_intent", headers=auth)
        assert model.status_code == 200 and model.json()["id"] == "routenlp/cs_intent"
        missing = await client.get("/v1/models/routenlp/nope", headers={**auth, "x-request-id": "abc-2"})
        assert missing.status_code == 404 and "'nope'" in missing.json()["error"]["message"]
        assert (await client.get("/v1/models/routenlp/cs_intent")).status_code == 401
    ingress.query_log.close()
    assert [r["trace_id"] for r in read_records(str(tmp_path / "log"), "queries")] == ["abc-1"]
    rejected = [e for e in read_records(str(tmp_path / "log"), "events") if e.get("kind") == "rejected"]
    assert [(e["http_status"], e["trace_id"]) for e in rejected] == [(404, "abc-2"), (401, None)]


async def test_a_stream_answered_by_a_cheap_tier_carries_its_routing_in_headers_and_chunks(
    tmp_path: Path, replay_file: Path
) -> None:
    artifact = ThresholdTable(version="cal-9", thresholds={"cheap": {"cs_intent": 1.0}}).save(tmp_path / "t.json")
    ingress, client = make_ingress(tmp_path, replay_file, cascade={"thresholds_path": str(artifact)})
    async with client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        lines = [line for line in response.text.split("\n\n") if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-routenlp-answered-by"] == "cheap" and response.headers["x-routenlp-streaming"] == "buffered"
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["content"] == "card_arrival" and chunks[0]["routing"]["answered_by"] == "cheap"
    assert chunks[-1]["usage"]["total_tokens"] == 110 and chunks[0]["system_fingerprint"].endswith("policy=cheapest")
    ingress.query_log.close()
