"""Issue #13, request correctness and security: each test starts from the issue's reproduction.

Requests go through the real FastAPI app of the router ingress (``RouterIngress``) over
httpx's ASGI transport; the tier handles are fakes with the shape of Serve handles.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.router import RouterIngress
from routenlp_ray import ConfigError, ReplayMissError
from routenlp_ray.cascade import CascadeOutcome
from routenlp_ray.config import parse_config
from routenlp_ray.config.server import ServerConfig
from routenlp_ray.config.tiers import ReplayEngineConfig
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.engines.replay import ReplayEngine
from routenlp_ray.serving import RequestGate
from routenlp_ray.telemetry import read_records
from tests.conftest import DATA_DIR, small_config_dict
from tests.unit.test_ingress import FakeTierHandle, Method

CHAT = {"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "where is my new card?"}]}
KEY = "sk-issue13-key"
AUTH = {"authorization": f"Bearer {KEY}"}


class FailingTierHandle:
    """A tier whose call fails the way a dead Ray actor does, with Ray's internals in the message."""

    def __init__(self, error: Exception) -> None:
        async def generate(request: GenerationRequest) -> GenerationResult:
            raise error

        self.generate = Method(generate)


class ActorDiedError(Exception):
    """Named like Ray's, so the client-side text is what a real dead replica would give."""


RAY_INTERNALS = (
    "The actor died unexpectedly before finishing this task. class_name: ServeReplica:routenlp:tier-frontier "
    "actor_id: 6f3c1a2b9d8e7f6a5b4c3d2e01000000 pid: 48211 namespace: serve ip: 10.0.3.17"
)


def build(tmp_path: Path, replay_file: Path, tiers: dict[str, Any] | None = None, **overrides: Any):
    config = small_config_dict(tmp_path, replay_file, **overrides)
    handles = tiers or {"cheap": FakeTierHandle("card_arrival", [-0.1]), "frontier": FakeTierHandle("big", None)}
    ingress = RouterIngress(config, handles, use_ray_metrics=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.build_asgi_app()), base_url="http://router")
    return ingress, client


def events(ingress: RouterIngress, tmp_path: Path) -> list[dict[str, Any]]:
    ingress.query_log.close()
    return read_records(str(tmp_path / "log"), "events")


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None = None, in_message: str = ""):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert in_message in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# -- 1. deeply nested JSON --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "field"), [("/v1/chat/completions", "messages"), ("/v1/completions", "prompt"), ("/v1/feedback", "score")]
)
async def test_deeply_nested_json_is_a_logged_400(tmp_path: Path, replay_file: Path, path: str, field: str) -> None:
    ingress, client = build(tmp_path, replay_file)
    raw = b'{"model": "routenlp/chat", "' + field.encode() + b'": ' + b"[" * 100_000
    async with client:
        response = await client.post(path, content=raw, headers={"content-type": "application/json"})
        assert_openai_error(response, 400, in_message="nests JSON deeper than")
        closed = b'{"model": "routenlp/chat", "' + field.encode() + b'": ' + b"[" * 40 + b"]" * 40 + b"}"
        response = await client.post(path, content=closed)
        assert_openai_error(response, 400, in_message="nests JSON deeper than 32 levels")
    assert [(e["kind"], e["http_status"]) for e in events(ingress, tmp_path)] == [("rejected", 400)] * 2


# -- 2. a lone surrogate ----------------------------------------------------------------------
async def test_a_lone_surrogate_is_a_400_at_parse_time_naming_the_field(tmp_path: Path, replay_file: Path) -> None:
    ingress, client = build(tmp_path, replay_file)
    raw = b'{"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    async with client:
        response = await client.post("/v1/chat/completions", content=raw)
        assert_openai_error(response, 400, param="messages.0.content", in_message="unpaired UTF-16 surrogate (\\ud800)")
        # A surrogate pair is one valid character, not an error.
        pair = b'{"model": "routenlp/chat", "messages": [{"role": "user", "content": "hello \\ud83d\\ude00"}]}'
        assert (await client.post("/v1/chat/completions", content=pair)).status_code == 200
    logged = events(ingress, tmp_path)
    assert [e["param"] for e in logged] == ["messages.0.content"]
    assert len(read_records(str(tmp_path / "log"), "queries")) == 1  # only the valid request reached a tier


# -- 5. Ray internals in routing ----------------------------------------------------------------
async def test_tier_errors_reach_the_client_without_ray_internals(tmp_path: Path, replay_file: Path) -> None:
    tiers = {"cheap": FakeTierHandle("card_arrival", [-0.1]),
             "frontier": FailingTierHandle(ActorDiedError(RAY_INTERNALS))}
    ingress, client = build(tmp_path, replay_file, tiers, cascade={"default_threshold": 0.0})
    async with client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    attempts = response.json()["routing"]["attempts"]
    assert attempts[-1]["error"] == "ActorDiedError (details in the router log)"
    for secret in ("6f3c1a2b9d8e7f6a5b4c3d2e01000000", "48211", "10.0.3.17", "namespace"):
        assert secret not in response.text
    ingress.query_log.close()


async def test_a_503_names_each_tier_without_ray_internals(tmp_path: Path, replay_file: Path) -> None:
    tiers = {"cheap": FailingTierHandle(ReplayMissError("tier 'cheap' has no recorded answer for this input")),
             "frontier": FailingTierHandle(ActorDiedError(RAY_INTERNALS))}
    ingress, client = build(tmp_path, replay_file, tiers, cascade={"default_threshold": 1.0})
    async with client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 503, in_message="cheap: ReplayMissError: tier 'cheap' has no recorded answer")
    assert "frontier: ActorDiedError" in error["message"] and "10.0.3.17" not in error["message"]
    assert (error["type"], error["code"]) == ("server_error", "all_tiers_failed")
    assert [e["http_status"] for e in events(ingress, tmp_path) if e["kind"] == "server_error"] == [503]


# -- 6 and 14. the replay tier ------------------------------------------------------------------
def replay_engine(tmp_path: Path, rows: list[dict[str, Any]]) -> ReplayEngine:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ReplayEngine(ReplayEngineConfig(records=[str(path)], logprobs_field="logprobs"))


async def test_the_replay_tier_does_not_answer_across_tasks(tmp_path: Path) -> None:
    sentence = "The supplier may terminate this agreement at any time without notice."
    engine = replay_engine(tmp_path, [{"task": "legal_risk", "input": sentence, "reference": "fair"}])
    with pytest.raises(ReplayMissError):
        await engine.generate(GenerationRequest(request_id="r", raw_input=sentence, task="cs_intent", prompt=sentence))
    same_task = await engine.generate(
        GenerationRequest(request_id="r", raw_input=sentence, task="legal_risk", prompt=sentence)
    )
    assert same_task.text == "fair"


async def test_the_replay_tier_honours_max_tokens(tmp_path: Path) -> None:
    long = "The quarterly filing reports revenue growth of twelve percent. " * 20
    engine = replay_engine(tmp_path, [
        {"task": "fin_summarization", "input": "filing", "reference": long},
        {"task": "chat", "input": "hi", "reference": "a b c d e f", "logprobs": [-0.1] * 6},
    ])
    cut = await engine.generate(GenerationRequest(request_id="r", raw_input="filing", task="fin_summarization",
                                                  prompt="filing", max_tokens=16))
    assert cut.finish_reason == "length" and cut.completion_tokens <= 16 and long.startswith(cut.text)
    full = await engine.generate(GenerationRequest(request_id="r", raw_input="filing", task="fin_summarization",
                                                   prompt="filing", max_tokens=4096))
    assert full.finish_reason == "stop" and full.text == long
    tokens = await engine.generate(
        GenerationRequest(request_id="r", raw_input="hi", task="chat", prompt="hi", max_tokens=2)
    )
    assert tokens.token_logprobs == [-0.1, -0.1] and tokens.completion_tokens == 2 and tokens.finish_reason == "length"


# -- 7. a fallback is not a saving --------------------------------------------------------------
class SpyMetrics:
    def __init__(self) -> None:
        self.outcomes: list[tuple[CascadeOutcome, float]] = []

    def record_outcome(self, task: str, outcome: CascadeOutcome, latency_ms: float, saved_usd: float) -> None:
        self.outcomes.append((outcome, saved_usd))

    def record_failure(self, task: str, reason: str) -> None:
        return None

    def record_rejection(self, reason: str) -> None:
        return None


async def test_a_fallback_saves_nothing_and_is_reported_as_missing_the_bar(tmp_path: Path, replay_file: Path) -> None:
    # The cheap tier answers but is not accepted; the frontier fails; the cheap answer is returned.
    tiers = {"cheap": FakeTierHandle("unsure", [-3.0]), "frontier": FailingTierHandle(ActorDiedError(RAY_INTERNALS))}
    ingress, client = build(tmp_path, replay_file, tiers, cascade={"default_threshold": 0.01})
    spy = SpyMetrics()
    ingress.service.metrics = spy
    async with client:
        routing = (await client.post("/v1/chat/completions", json=CHAT)).json()["routing"]
    assert routing["fallback"] is True and routing["met_quality_bar"] is False
    assert routing["saved_usd"] == 0.0 and routing["cost_usd"] > 0
    assert routing["frontier_cost_usd"] > routing["cost_usd"]
    [(outcome, saved)] = spy.outcomes
    assert outcome.fallback and saved == 0.0
    ingress.query_log.close()
    [logged] = read_records(str(tmp_path / "log"), "queries")
    assert logged["fallback"] is True and logged["saved_usd"] == 0.0 and logged["cost_usd"] == routing["cost_usd"]


# -- 8, 9 and 10. keys ------------------------------------------------------------------------
def test_inline_keys_are_refused_at_load_without_echoing_them(tmp_path: Path, replay_file: Path) -> None:
    config = small_config_dict(tmp_path, replay_file, server={"api_keys": [KEY]})
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert "server.api_keys" in str(err.value) and "ROUTENLP_API_KEYS" in str(err.value)
    assert KEY not in str(err.value)


def test_keys_travel_as_env_or_file_names_only(
    tmp_path: Path, replay_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keys").write_text(f"{KEY}\n")
    monkeypatch.setenv("ROUTENLP_API_KEYS", "env-key")
    config = parse_config(small_config_dict(tmp_path, replay_file, server={"api_keys_file": str(tmp_path / "keys")}))
    dumped = json.dumps(config.model_dump(mode="json"))  # what the builder binds into Serve's args
    assert KEY not in dumped and "env-key" not in dumped
    gate = RequestGate(config.server)
    assert KEY not in repr(vars(gate)) and "env-key" not in repr(vars(gate))  # only digests are kept
    gate.authenticate(f"Bearer {KEY}")
    gate.authenticate("Bearer env-key")


def test_key_file_problems_fail_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.api_keys_file: cannot read"):
        RequestGate(ServerConfig(api_keys_file=str(tmp_path / "missing"), api_keys_env=None))
    (tmp_path / "empty").write_text("# no keys yet\n\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        RequestGate(ServerConfig(api_keys_file=str(tmp_path / "empty"), api_keys_env=None))


def test_keys_are_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import routenlp_ray.serving.http as http

    (tmp_path / "keys").write_text("first\nsecond\nthird\n")
    gate = RequestGate(ServerConfig(api_keys_file=str(tmp_path / "keys"), api_keys_env=None))
    calls: list[tuple[bytes, bytes]] = []
    real = http.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(http.hmac, "compare_digest", spy)
    for token in ("first", "third", "nope"):
        calls.clear()
        gate.is_authorized(f"Bearer {token}")
        # Every key is compared, whether the token matches the first, the last or none.
        assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/v1/models", "/readyz", "/v1/responses"])
async def test_with_keys_set_every_endpoint_but_liveness_needs_one(
    tmp_path: Path, replay_file: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv("ROUTENLP_API_KEYS", KEY)
    ingress, client = build(tmp_path, replay_file)
    async with client:
        error = assert_openai_error(await client.get(path), 401, in_message="missing API key")
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert (await client.get(path, headers={"authorization": "Bearer wrong"})).status_code == 401
        assert (await client.get(path, headers=AUTH)).status_code != 401
        open_health = (await client.get("/healthz")).json()
        assert open_health == {"status": "ok"}  # no pid, versions or tiers without a key
        assert "pid" in (await client.get("/healthz", headers=AUTH)).json()
    ingress.query_log.close()


# -- 11 and 12. strict types and unsupported parameters -----------------------------------------
@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"max_tokens": True}, "max_tokens", "valid integer"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"temperature": "0.5"}, "temperature", "valid number"),
        ({"n": 2}, "n", "only n=1"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported parameter 'tools'"),
        ({"tool_choice": "auto"}, "tool_choice", "unsupported parameter 'tool_choice'"),
        ({"logprobs": True}, "logprobs", "unsupported parameter 'logprobs'"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported parameter 'top_logprobs'"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported parameter 'response_format'"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported parameter 'logit_bias'"),
        ({"presence_penalty": 0.5}, "presence_penalty", "unsupported parameter 'presence_penalty'"),
        ({"seed": 7, "temperature": 0.7}, "seed", "unsupported parameter 'seed'"),
    ],
)
async def test_strict_types_and_unsupported_parameters_are_400s_naming_the_field(
    tmp_path: Path, replay_file: Path, extra: dict[str, Any], param: str, message: str
) -> None:
    ingress, client = build(tmp_path, replay_file)
    async with client:
        response = await client.post("/v1/chat/completions", json={**CHAT, **extra})
        error = assert_openai_error(response, 400, param=param, in_message=message)
        assert error["type"] == "invalid_request_error"
    assert [e["param"] for e in events(ingress, tmp_path)] == [param]


async def test_no_op_values_of_unsupported_parameters_are_accepted(tmp_path: Path, replay_file: Path) -> None:
    ingress, client = build(tmp_path, replay_file)
    noop = {"tools": [], "tool_choice": "none", "logprobs": False, "response_format": {"type": "text"},
            "presence_penalty": 0, "frequency_penalty": 0.0, "seed": 3, "temperature": 0}
    async with client:
        assert (await client.post("/v1/chat/completions", json={**CHAT, **noop})).status_code == 200
        completion = {"model": "routenlp/cs_intent", "prompt": "where is my new card?"}
        assert (await client.post("/v1/completions", json={**completion, "echo": True})).status_code == 400
        assert (await client.post("/v1/completions", json={**completion, "best_of": 3})).status_code == 400
    ingress.query_log.close()


# -- 13. feedback -----------------------------------------------------------------------------
async def test_feedback_on_an_unknown_or_already_rated_response_is_refused(tmp_path: Path, replay_file: Path) -> None:
    ingress, client = build(tmp_path, replay_file)
    async with client:
        response_id = (await client.post("/v1/chat/completions", json=CHAT)).json()["id"]
        unknown = await client.post("/v1/feedback", json={"response_id": "chatcmpl-nope", "accepted": True})
        assert (assert_openai_error(unknown, 404, param="response_id", in_message="unknown response_id")["code"]
                == "response_not_found")
        first = await client.post("/v1/feedback", json={"response_id": response_id, "accepted": True})
        assert first.status_code == 200
        again = await client.post("/v1/feedback", json={"response_id": response_id, "accepted": False})
        assert assert_openai_error(again, 409, in_message="recorded already")["code"] == "duplicate_feedback"
        # Another source (an audit label) on the same response is new information.
        label = {"response_id": response_id, "accepted": False, "source": "label"}
        assert (await client.post("/v1/feedback", json=label)).status_code == 200
    ingress.query_log.close()
    assert [r["source"] for r in read_records(str(tmp_path / "log"), "feedback")] == ["user", "label"]


async def test_feedback_reaching_another_router_replica_finds_the_response_in_the_log(
    tmp_path: Path, replay_file: Path
) -> None:
    first, first_client = build(tmp_path, replay_file)
    async with first_client:
        response_id = (await first_client.post("/v1/chat/completions", json=CHAT)).json()["id"]
    second, second_client = build(tmp_path, replay_file)  # same log, fresh memory: another replica
    async with second_client:
        response = await second_client.post("/v1/feedback", json={"response_id": response_id, "score": 0.9})
        assert response.status_code == 200 and response.json()["recorded"] is True
    first.query_log.close()
    second.query_log.close()
    [record] = read_records(str(tmp_path / "log"), "feedback")
    assert record["matched"] and record["answered_by"] in ("cheap", "frontier")


# -- 15. chunked bodies -----------------------------------------------------------------------
async def test_a_chunked_body_is_refused_once_it_passes_the_limit_not_after_reading_it(
    tmp_path: Path, replay_file: Path
) -> None:
    ingress, client = build(tmp_path, replay_file)
    sent = 0

    async def thirty_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(30 * 16):
            sent += 1
            yield b"x" * 65_536

    async with client:
        response = await client.post("/v1/chat/completions", content=thirty_megabytes())
    assert_openai_error(response, 413, in_message="the limit is 1000000 bytes")
    assert sent * 65_536 < 2_000_000  # refused after about 1 MB, not 30 MB
    ingress.query_log.close()


# -- 16. the input limit admits the data set ----------------------------------------------------
def test_the_default_input_limit_admits_every_fin_summarization_input() -> None:
    path = DATA_DIR / "fin_summarization" / "validation.jsonl"
    if not path.is_file():
        pytest.skip(f"shared evaluation data not found at {DATA_DIR}")
    gate = RequestGate(ServerConfig(api_keys_env=None))
    lengths = [len(json.loads(line)["input"]) for line in path.read_text().splitlines() if line.strip()]
    assert len(lengths) == 249
    for length in lengths:
        gate.check_input_chars(length)


# -- 17. method and path errors, and unexpected ones ------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v1/responses", 404, "Invalid URL (POST /v1/responses)"),
        ("GET", "/nope", 404, "Invalid URL (GET /nope)"),
        ("GET", "/v1/chat/completions", 405,
         "Method not allowed (GET /v1/chat/completions); this endpoint accepts POST"),
        ("DELETE", "/v1/models", 405, "Method not allowed (DELETE /v1/models)"),
    ],
)
async def test_method_and_path_errors_use_the_openai_shape(
    tmp_path: Path, replay_file: Path, method: str, path: str, status: int, message: str
) -> None:
    ingress, client = build(tmp_path, replay_file)
    async with client:
        response = await client.request(method, path, json={})
    error = assert_openai_error(response, status, in_message=message)
    assert error["type"] == "invalid_request_error" and "detail" not in response.json()
    assert [(e["kind"], e["http_status"]) for e in events(ingress, tmp_path)] == [("rejected", status)]


async def test_an_unexpected_error_is_a_logged_500_in_the_openai_shape(tmp_path: Path, replay_file: Path) -> None:
    ingress, client = build(tmp_path, replay_file)

    def broken_models() -> dict[str, Any]:
        raise KeyError("secret internal detail")

    ingress.service.models = broken_models  # type: ignore[method-assign]
    async with client:
        response = await client.get("/v1/models")
        error = assert_openai_error(response, 500, in_message="internal error while serving GET /v1/models")
        assert (error["type"], error["code"]) == ("server_error", "internal_error")
        assert "secret internal detail" not in response.text
        assert (await client.get("/healthz")).json()["status"] == "ok"
    [logged] = [e for e in events(ingress, tmp_path) if e["kind"] == "server_error"]
    assert logged["id"] in error["message"] and "secret internal detail" in logged["error"]


async def test_an_unknown_model_follows_openai_conventions(tmp_path: Path, replay_file: Path) -> None:
    ingress, client = build(tmp_path, replay_file)
    async with client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "routenlp/translate"})
    error = assert_openai_error(response, 404, param="model", in_message="unknown task 'translate'")
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    ingress.query_log.close()


def test_the_embedded_default_accepts_the_longest_input_of_the_data_set() -> None:
    import os

    from routenlp_ray.config import load_config
    from routenlp_ray.tasks.data import load_examples

    repo = Path(__file__).resolve().parents[2]
    data = Path(os.environ.get("ROUTENLP_DATA", repo.parent / "shared" / "data"))
    files = sorted(data.glob("fin_summarization/*.jsonl"))
    if not files:
        pytest.skip(f"shared evaluation data not found at {data} (set ROUTENLP_DATA)")
    longest = max(len(e.input) for f in files for e in load_examples(f))
    assert load_config(repo / "serve_config.local.yaml").server.max_input_chars >= longest
