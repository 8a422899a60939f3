"""Readiness and replica-death handling of the router's tier calls, without Ray Serve."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from deployments.readiness import Readiness
from deployments.tier_clients import HandleTierClient
from routenlp_ray._exceptions import ReplayMissError
from routenlp_ray.config.server import ServerConfig
from routenlp_ray.engines.base import GenerationRequest, GenerationResult


class Call:
    """A ``handle.method`` whose ``.remote()`` returns an awaitable, as a DeploymentHandle does."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def remote(self, *args: Any) -> Any:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1

        async def result() -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome == "hang":
                await asyncio.sleep(60)
            return outcome

        return result()


class Handle:
    def __init__(self, deployment: str, ready: Any = None, generate: list[Any] | None = None) -> None:
        self.deployment_name, self.app_name = deployment, "app"
        self.ready = Call([ready if ready is not None else {"warmed": True}])
        self.generate = Call(generate or [])


def states(**per_deployment: tuple[str, int]) -> Any:
    return lambda app: {name: {"status": s, "replicas": {"RUNNING": n}} for name, (s, n) in per_deployment.items()}


def check(readiness: Readiness) -> dict[str, Any]:
    return asyncio.run(readiness.check())


def test_ready_when_every_tier_is_healthy_and_answers_from_a_warmed_replica() -> None:
    handles = {"cheap": Handle("tier-cheap"), "frontier": Handle("tier-frontier")}
    report = check(Readiness(handles, states=states(**{"tier-cheap": ("HEALTHY", 2), "tier-frontier": ("UPSCALING", 1)})))
    assert report["status"] == "ready"
    assert report["tiers"]["cheap"] == {"deployment": "tier-cheap", "status": "HEALTHY", "replicas": {"RUNNING": 2},
                                        "warmed": True, "ready": True}


def test_a_tier_still_loading_makes_the_app_not_ready_and_says_why() -> None:
    handles = {"cheap": Handle("tier-cheap"), "frontier": Handle("tier-frontier", ready="hang")}
    readiness = Readiness(handles, states=states(**{"tier-cheap": ("HEALTHY", 1), "tier-frontier": ("UPDATING", 0)}),
                          timeout_s=0.2)
    report = check(readiness)
    assert report["status"] == "not_ready"
    assert report["tiers"]["cheap"]["ready"] is True
    reason = report["tiers"]["frontier"]["reason"]
    assert "deployment status is UPDATING" in reason and "no running replica" in reason
    assert "no replica answered a readiness call within 0.2s" in reason


def test_a_dead_tier_is_a_reason_not_a_crash_of_the_probe() -> None:
    handles = {"cheap": Handle("tier-cheap", ready=RuntimeError("replica died"))}
    report = check(Readiness(handles, states=states(**{"tier-cheap": ("UNHEALTHY", 1)})))
    assert report["status"] == "not_ready"
    assert report["tiers"]["cheap"]["reason"] == "deployment status is UNHEALTHY; readiness call failed: RuntimeError"


def test_a_tier_serve_does_not_know_is_not_ready() -> None:
    report = check(Readiness({"cheap": Handle("tier-cheap")}, states=lambda app: {}))
    assert report["tiers"]["cheap"]["status"] == "UNKNOWN" and report["status"] == "not_ready"


REQUEST = GenerationRequest(request_id="r1", prompt="hi")
ANSWER = GenerationResult(text="hello", token_logprobs=[-0.1], prompt_tokens=1, completion_tokens=1, latency_ms=1.0,
                          model="m")


def died() -> ActorDiedError:
    return ActorDiedError()


def test_a_call_whose_replica_died_is_sent_once_more() -> None:
    handle = Handle("tier-cheap", generate=[died(), ANSWER])
    assert asyncio.run(HandleTierClient(handle)(REQUEST)) == ANSWER
    assert handle.generate.calls == 2


def test_a_second_replica_death_is_raised_so_the_cascade_escalates() -> None:
    handle = Handle("tier-cheap", generate=[died(), died(), ANSWER])
    with pytest.raises(ActorDiedError):
        asyncio.run(HandleTierClient(handle)(REQUEST))
    assert handle.generate.calls == 2


def test_an_expected_failure_returned_as_a_value_is_raised_on_the_router_side() -> None:
    handle = Handle("tier-frontier", generate=[ReplayMissError("tier 'frontier' has no recorded answer for this input")])
    with pytest.raises(ReplayMissError, match="no recorded answer"):
        asyncio.run(HandleTierClient(handle)(REQUEST))
    assert handle.generate.calls == 1


def test_the_router_keeps_two_replicas_by_default() -> None:
    scaling = ServerConfig().autoscaling
    assert scaling.min_replicas == 2 and scaling.max_replicas >= 2


async def test_readyz_goes_through_the_request_gate_and_is_503_until_serve_knows_the_tiers(
    tmp_path: Path, replay_file: Path
) -> None:
    import httpx

    from deployments.router import RouterIngress
    from routenlp_ray.telemetry import read_records
    from tests.conftest import small_config_dict

    (tmp_path / "keys").write_text("k\n")
    config = small_config_dict(
        tmp_path, replay_file, server={"api_keys_file": str(tmp_path / "keys"), "default_task": "chat"}
    )
    # Handles Serve has never heard of: no deployment status, so nothing can be ready.
    handles = {"cheap": Handle("tier-cheap"), "frontier": Handle("tier-frontier")}
    ingress = RouterIngress(config, handles, use_ray_metrics=False)
    ingress.readiness = Readiness(handles, states=lambda app: {})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.build_asgi_app()), base_url="http://router")
    async with client:
        assert (await client.get("/readyz")).status_code == 401
        response = await client.get("/readyz", headers={"authorization": "Bearer k"})
        assert response.status_code == 503
        assert response.json()["tiers"]["cheap"]["reason"].startswith("deployment status is UNKNOWN")
        ingress.readiness = Readiness(handles, states=states(**{"tier-cheap": ("HEALTHY", 1),
                                                                "tier-frontier": ("HEALTHY", 1)}))
        response = await client.get("/readyz", headers={"authorization": "Bearer k"})
        assert response.status_code == 200 and response.json()["status"] == "ready"
        assert (await client.get("/healthz")).status_code == 200  # liveness needs no readiness
    ingress.query_log.close()
    rejected = [e for e in read_records(str(tmp_path / "log"), "events") if e.get("kind") == "rejected"]
    assert [(e["endpoint"], e["http_status"]) for e in rejected] == [("/readyz", 401)]
