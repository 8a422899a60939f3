"""The embedded default (specialist, SmolLM2 and replay frontier tiers) on real Ray Serve, through the openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from routenlp_ray.config import load_config
from routenlp_ray.telemetry import read_dataset, read_records
from tests.conftest import REPO_ROOT, tier_named
from tests.cpu.conftest import deploy_declaratively, prometheus_text

pytestmark = pytest.mark.slow

APP = "embedded"


def embedded_config(tmp_path: Path, data_dir: Path) -> Any:
    config = load_config(REPO_ROOT / "serve_config.local.yaml")
    data = config.model_dump(mode="json")
    data["storage"] = {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")}
    # A small slice of the shared data keeps the replay tier quick to load in CI.
    tier_named(data, "frontier")["engine"]["records"] = [str(data_dir / "cs_intent" / "validation.jsonl")]
    tier_named(data, "smollm2")["limits"]["default_max_tokens"] = 8
    data["cascade"]["thresholds_path"] = str(REPO_ROOT / data["cascade"]["thresholds_path"])
    return data


def deploy(data: dict[str, Any], user_config: dict[str, Any]) -> None:
    """Deploy the way ``serve deploy serve_config.local.yaml`` does, router user_config included."""
    deploy_declaratively(
        [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "deployments.builders:build_app",
                "args": data,
                "deployments": [{"name": "router", "user_config": user_config}],
            }
        ]
    )


@pytest.fixture(scope="module")
def app(serve_instance: int, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("embedded")
    data = embedded_config(tmp_path, data_dir)
    deploy(data, user_config={})
    yield {"port": serve_instance, "config": data, "log": data["storage"]["log_uri"], "tmp": tmp_path}


@pytest.fixture()
def client(app: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{app['port']}/v1", api_key="unused", max_retries=0, timeout=120)


def cs_intent_example(data_dir: Path) -> dict[str, Any]:
    with (data_dir / "cs_intent" / "validation.jsonl").open() as handle:
        return json.loads(handle.readline())


def test_chat_completion_runs_real_smollm2_and_returns_routing(client: OpenAI, app: dict[str, Any]) -> None:
    response = client.chat.completions.create(
        model="routenlp/chat", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8
    )
    routing = response.model_extra["routing"]
    skipped, first = routing["attempts"][:2]
    assert (skipped["tier"], skipped["status"], skipped["cost_usd"]) == ("specialist", "skipped", 0.0)
    assert first["tier"] == "smollm2" and first["completion_tokens"] >= 1
    assert first["uncertainty"] is not None and first["threshold"] == 1.0
    assert response.choices[0].message.content
    assert response.usage.completion_tokens <= 8
    # The replay frontier holds cs_intent answers only, so SmolLM2 answers either way: accepted when its
    # uncertainty is within its threshold, else as the fallback once the frontier has missed.
    assert routing["answered_by"] == "smollm2"
    assert routing["fallback"] == (first["uncertainty"] > first["threshold"])
    assert first["status"] == ("escalated" if routing["fallback"] else "accepted")
    assert routing["frontier_cost_usd"] > 0
    logged = {r["id"]: r for r in read_records(app["log"], "queries")}
    assert [a["tier"] for a in logged[response.id]["attempts"]][:2] == ["specialist", "smollm2"]


def test_a_cs_intent_query_the_specialist_is_sure_of_is_answered_by_it(client: OpenAI, data_dir: Path) -> None:
    # A query from the specialist's own training split: the shipped heads and thresholds accept it.
    with (data_dir / "cs_intent" / "train.jsonl").open() as handle:
        example = json.loads(handle.readline())
    response = client.chat.completions.create(
        model="routenlp/cs_intent", messages=[{"role": "user", "content": example["input"]}], max_tokens=8
    )
    routing = response.model_extra["routing"]
    assert response.choices[0].message.content == example["reference"]
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [("specialist", "accepted")]
    assert routing["saved_usd"] > 0.99 * routing["frontier_cost_usd"] > 0


def test_threshold_pushed_through_user_config_forces_escalation_without_restart(
    client: OpenAI, app: dict[str, Any], data_dir: Path
) -> None:
    import ray

    def router_replicas() -> set[str]:
        # Two router replicas answer /healthz in turn, so "no restart" is: the same replica actors.
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"{APP}#router#" in a["name"]}

    before, replicas = httpx.get(f"http://127.0.0.1:{app['port']}/healthz").json(), router_replicas()
    deploy(app["config"], user_config={"thresholds": {"specialist": {"cs_intent": -1.0}}})
    after = httpx.get(f"http://127.0.0.1:{app['port']}/healthz").json()
    assert len(replicas) == 2 and router_replicas() == replicas
    assert after["thresholds_version"] != before["thresholds_version"]

    example = cs_intent_example(data_dir)
    response = client.chat.completions.create(
        model="routenlp/cs_intent", messages=[{"role": "user", "content": example["input"]}], max_tokens=8
    )
    routing = response.model_extra["routing"]
    # SmolLM2 (with its student) serves chat only in the embedded default: skipped for cs_intent, at no cost.
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [
        ("specialist", "escalated"), ("smollm2", "skipped"), ("frontier", "accepted")
    ]
    assert routing["attempts"][0]["threshold"] == -1.0 and routing["attempts"][1]["cost_usd"] == 0.0
    assert routing["answered_by"] == "frontier"
    assert response.choices[0].message.content == example["reference"]
    events = read_records(app["log"], "events")
    assert any(e.get("event") == "reconfigure" for e in events)
    deploy(app["config"], user_config={})


def test_completions_and_streaming(client: OpenAI) -> None:
    completion = client.completions.create(model="routenlp/chat", prompt="The capital of France is", max_tokens=4)
    assert completion.choices[0].text and completion.model_extra["routing"]["attempts"]
    chunks = list(
        client.chat.completions.create(
            model="routenlp/chat", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].model_extra["routing"]["answered_by"]


def test_a_new_fin_summarization_query_is_answered_by_the_fallback_tier(
    client: OpenAI, app: dict[str, Any], data_dir: Path
) -> None:
    # The replay frontier here holds cs_intent answers only, so this validation filing is held out (a new
    # query), and no cheaper tier serves fin_summarization: cascade.fallback_tier (SmolLM2) answers it.
    with (data_dir / "fin_summarization" / "validation.jsonl").open() as handle:
        example = json.loads(handle.readline())
    raw = client.chat.completions.with_raw_response.create(
        model="routenlp/fin_summarization", messages=[{"role": "user", "content": example["input"]}], max_tokens=8
    )
    response = raw.parse()
    routing = response.model_extra["routing"]
    assert raw.http_response.status_code == 200 and response.choices[0].message.content
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [
        ("specialist", "skipped"), ("smollm2", "skipped"), ("frontier", "error"), ("smollm2", "fallback")
    ]
    assert routing["attempts"][2]["error"].startswith("ReplayMissError")
    assert routing["answered_by"] == "smollm2" and routing["fallback"] is True
    assert routing["met_quality_bar"] is False and routing["saved_usd"] == 0.0
    assert raw.headers["x-routenlp-fallback"] == "true" and raw.headers["x-routenlp-answered-by"] == "smollm2"
    logged = {r["id"]: r for r in read_records(app["log"], "queries")}
    assert logged[response.id]["status"] == "ok" and logged[response.id]["fallback"] is True


def test_feedback_lands_in_the_log_and_ray_data_reads_it(client: OpenAI, app: dict[str, Any]) -> None:
    response = client.chat.completions.create(
        model="routenlp/chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4
    )
    posted = httpx.post(
        f"http://127.0.0.1:{app['port']}/v1/feedback",
        json={"response_id": response.id, "accepted": False, "score": 0.2, "comment": "too short"},
    )
    assert posted.status_code == 200 and posted.json()["recorded"] is True
    feedback = read_dataset(app["log"], "feedback").to_pandas()
    row = feedback[feedback["response_id"] == response.id].iloc[0]
    assert bool(row["matched"]) and not bool(row["accepted"]) and row["score"] == 0.2
    queries = read_dataset(app["log"], "queries")
    assert response.id in set(queries.to_pandas()["id"])


def test_models_lists_tasks(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"routenlp/chat", "routenlp/cs_intent", "routenlp/fin_ner"} <= ids


def test_router_metrics_reach_prometheus(client: OpenAI, app: dict[str, Any]) -> None:
    client.chat.completions.create(model="routenlp/chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    text = prometheus_text("routenlp_requests", "routenlp_request_latency_ms_bucket")
    assert 'task="chat"' in text and "routenlp_requests" in text
    assert "routenlp_tier_latency_ms_bucket" in text and "routenlp_cost_usd" in text


def test_concurrent_requests_share_a_batch_on_the_smollm2_tier(app: dict[str, Any]) -> None:
    from ray import serve

    from routenlp_ray.engines import GenerationRequest

    tier = serve.get_deployment_handle("tier-smollm2", app_name=APP)
    requests = [
        GenerationRequest(request_id=str(i), messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=3)
        for i in range(6)
    ]
    results = [response.result(timeout_s=120) for response in [tier.generate.remote(r) for r in requests]]
    assert all(r.completion_tokens >= 1 for r in results)
    assert max(r.metadata["batch_size"] for r in results) > 1


def test_service_handed_a_router_artifact_starts_where_the_router_says(app: dict[str, Any]) -> None:
    import numpy as np

    from routenlp_ray.models.encoder import SentenceEncoder
    from routenlp_ray.routing.learned_policy import RouterStartPolicy
    from routenlp_ray.routing.router import DifficultyRouter

    easy = [f"where is my new card number {i}?" for i in range(20)] + [f"my card {i} has not arrived" for i in range(20)]
    hard = [f"is clause {i} of this indemnification agreement enforceable in Delaware?" for i in range(20)] + [
        f"does section {i} limit the licensor's liability for consequential damages?" for i in range(20)
    ]
    encoder = SentenceEncoder()
    X = encoder.encode(easy + hard)
    tiers = ["specialist", "smollm2", "frontier"]
    y = np.array([[0.0, 1.0, 1.0]] * len(easy) + [[0.0, 0.0, 1.0]] * len(hard), dtype=np.float32)
    router = DifficultyRouter(tiers, epochs=60).fit(X, ["chat"] * len(y), y)
    policy = RouterStartPolicy(router, targets={"chat": 0.5}, encoder=encoder, version="router-test-1")
    artifact = policy.save(app["tmp"] / "router-artifact")
    questions = ["where is my new card?", "is the indemnification clause in this agreement enforceable?"]
    expected = [policy.start_tier("chat", q, tiers) for q in questions]
    assert expected == ["smollm2", "frontier"]

    deploy(app["config"], user_config={"start_policy": "router", "router_path": str(artifact)})
    client = OpenAI(base_url=f"http://127.0.0.1:{app['port']}/v1", api_key="unused", max_retries=0, timeout=120)
    for question, tier in zip(questions, expected):
        response = client.chat.completions.create(
            model="routenlp/chat", messages=[{"role": "user", "content": question}], max_tokens=4
        )
        routing = response.model_extra["routing"]
        assert routing["start_tier"] == tier and routing["attempts"][0]["tier"] == tier
        assert routing["policy_version"] == "router-test-1"
    deploy(app["config"], user_config={})


def test_a_router_from_fit_router_on_the_fast_path_is_served_through_reconfigure(app: dict[str, Any]) -> None:
    """The artifact ``routenlp bench routing --save-artifact`` writes (utility rule, static encoder) serves as is."""
    import numpy as np

    from routenlp_ray.models.static_encoder import StaticEncoder
    from routenlp_ray.routing.data import ModelPrice, RouterDataset
    from routenlp_ray.routing.fit import FitSettings, fit_router
    from routenlp_ray.routing.learned_policy import RouterStartPolicy

    tiers = ["specialist", "smollm2", "frontier"]
    easy = [f"where is my new card number {i}?" for i in range(40)]
    easy += [f"my card {i} has not arrived" for i in range(40)]
    hard = [f"is clause {i} of this indemnification agreement enforceable in Delaware?" for i in range(40)] + [
        f"does section {i} limit the licensor's liability for consequential damages?" for i in range(40)
    ]
    quality = np.array([[0.0, 1.0, 1.0]] * len(easy) + [[0.0, 0.0, 1.0]] * len(hard))
    pricing = {t["name"]: t["pricing"] for t in app["config"]["tiers"]}
    prices = {t: ModelPrice(name=t, input_per_1m=pricing[t]["input_per_1m"], output_per_1m=pricing[t]["output_per_1m"])
              for t in tiers}
    cost = np.array([[(20 * p.input_per_1m + 20 * p.output_per_1m) / 1e6 for p in prices.values()]] * len(quality))
    texts = easy + hard
    data = RouterDataset([f"q{i}" for i in range(len(texts))], texts, ["chat"] * len(texts), ["train"] * len(texts),
                         tiers, quality, cost, prices)
    encoder = StaticEncoder()
    fitted = fit_router(data, encoder.encode(texts), target=0.95, settings=FitSettings(epochs=60), seed=0)
    policy = RouterStartPolicy.from_utility_router(fitted, encoder=encoder, version="router-fit-1")
    artifact = policy.save(app["tmp"] / "router-fit-artifact")
    assert RouterStartPolicy.load(artifact).encoder_kind == "static"
    questions = ["where is my new card?", "is the indemnification clause in this agreement enforceable?"]
    expected = [policy.start_tier("chat", q, tiers) for q in questions]
    assert expected == ["smollm2", "frontier"]

    deploy(app["config"], user_config={"start_policy": "router", "router_path": str(artifact)})
    client = OpenAI(base_url=f"http://127.0.0.1:{app['port']}/v1", api_key="unused", max_retries=0, timeout=120)
    for question, tier in zip(questions, expected):
        response = client.chat.completions.create(
            model="routenlp/chat", messages=[{"role": "user", "content": question}], max_tokens=4
        )
        routing = response.model_extra["routing"]
        assert routing["start_tier"] == tier and routing["attempts"][0]["tier"] == tier
        assert routing["policy_version"] == "router-fit-1"
    deploy(app["config"], user_config={})
