"""Fuzzing the router's HTTP surface in-process: hundreds of hostile requests, no 5xx, still healthy.

Bounded and local: a fixed seed, the real FastAPI app of the ingress over httpx's ASGI
transport, fake tier handles. A failure prints the case, so it can be replayed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx

from deployments.router import RouterIngress
from routenlp_ray.telemetry import read_records
from tests.conftest import small_config_dict
from tests.hostile import generate
from tests.unit.test_ingress import FakeTierHandle

CASES = 400
KEY = "sk-fuzz"


async def test_hostile_requests_never_get_a_5xx_and_the_service_stays_healthy(
    tmp_path: Path, replay_file: Path, monkeypatch
) -> None:
    monkeypatch.setenv("ROUTENLP_API_KEYS", KEY)
    config = small_config_dict(tmp_path, replay_file, cascade={"default_threshold": 1.0})
    tiers = {"cheap": FakeTierHandle("card_arrival", [-0.1]), "frontier": FakeTierHandle("big", None)}
    ingress = RouterIngress(config, tiers, use_ray_metrics=False)
    transport = httpx.ASGITransport(app=ingress.build_asgi_app())
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(transport=transport, base_url="http://router", headers=headers) as client:
        served = await client.post("/v1/chat/completions", json={"model": "routenlp/chat",
                                                                 "messages": [{"role": "user", "content": "hello"}]})
        cases = generate(CASES, seed=13, response_ids=[served.json()["id"]])
        for case in cases:
            response = await client.request(case.method, case.path, content=case.body)
            statuses[response.status_code] += 1
            assert response.status_code < 500, f"{response.status_code} for {case.describe()}: {response.text[:300]}"
            if response.is_redirect:  # Starlette's trailing-slash redirect: no body to check
                continue
            assert response.headers.get("content-type", "").startswith("application/json"), (
                f"{response.status_code} {response.headers.get('content-type')} for {case.describe()}"
            )
            body = response.json()
            if response.status_code >= 400:
                assert set(body["error"]) == {"message", "type", "param", "code"}, case.describe()
                assert body["error"]["message"], case.describe()
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        again = await client.post("/v1/chat/completions", json={"model": "routenlp/chat",
                                                                "messages": [{"role": "user", "content": "hello"}]})
        assert again.status_code == 200
    ingress.query_log.close()
    # The generator has to reach past the parser, or it tests nothing but the parser.
    assert statuses[200] >= 10 and statuses[400] >= 100 and {404, 405, 413} <= set(statuses), statuses
    rejected = [e for e in read_records(str(tmp_path / "log"), "events") if e.get("kind") == "rejected"]
    assert len(rejected) == sum(n for status, n in statuses.items() if status >= 400)
