from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from routenlp_ray import (
    ArtifactError,
    AuthenticationError,
    EngineError,
    PayloadTooLargeError,
    UnknownResponseError,
    UnknownTaskError,
)
from routenlp_ray.config import parse_config
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.serving import ChatCompletionRequest, CompletionRequest, FeedbackRequest, RouterService
from routenlp_ray.telemetry import QueryLog, read_records
from tests.conftest import small_config_dict


class ScriptedTier:
    """A tier collaborator that answers with fixed logprobs and records what it was asked."""

    def __init__(self, text: str, logprobs: list[float] | None, fail: bool = False) -> None:
        self.text, self.logprobs, self.fail = text, logprobs, fail
        self.requests: list[GenerationRequest] = []

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if self.fail:
            raise EngineError("tier down")
        return GenerationResult(self.text, self.logprobs, prompt_tokens=100, completion_tokens=10, latency_ms=1.0)


def make_service(tmp_path: Path, replay_file: Path, cheap: ScriptedTier, frontier: ScriptedTier, **overrides):
    config = parse_config(small_config_dict(tmp_path, replay_file, **overrides))
    log = QueryLog(config.storage)
    return RouterService(config, {"cheap": cheap, "frontier": frontier}, query_log=log), config


def chat_body(**kwargs) -> ChatCompletionRequest:
    payload = {"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "where is my new card?"}]}
    payload.update(kwargs)
    return ChatCompletionRequest.model_validate(payload)


async def test_confident_cheap_answer_is_served_with_routing_metadata(tmp_path: Path, replay_file: Path) -> None:
    cheap, frontier = ScriptedTier("card_arrival", [-0.1, -0.2]), ScriptedTier("big", None)
    service, config = make_service(tmp_path, replay_file, cheap, frontier, cascade={"default_threshold": 0.5})
    response = await service.chat(chat_body())
    routing = response["routing"]
    assert response["choices"][0]["message"]["content"] == "card_arrival"
    assert routing["answered_by"] == "cheap" and routing["start_tier"] == "cheap"
    assert routing["attempts"][0]["uncertainty"] == pytest.approx(0.15)
    assert routing["attempts"][0]["threshold"] == 0.5
    cheap_cost = (100 * 0.1 + 10 * 0.2) / 1e6
    frontier_cost = (100 * 2.5 + 10 * 10.0) / 1e6
    assert routing["cost_usd"] == pytest.approx(cheap_cost)
    assert routing["saved_usd"] == pytest.approx(frontier_cost - cheap_cost)
    assert frontier.requests == []
    # The task template and system prompt reached the tier; the raw input is kept for replay.
    sent = cheap.requests[0]
    assert sent.messages[0] == {"role": "system", "content": "Answer with the intent label."}
    assert sent.raw_input == "where is my new card?" and sent.task == "cs_intent"
    service.query_log.close()
    [record] = read_records(config.storage.log_uri, "queries")
    assert record["id"] == response["id"] and record["answered_by"] == "cheap"
    assert record["attempts"][0]["cost_usd"] == pytest.approx(cheap_cost)


async def test_threshold_override_forces_escalation(tmp_path: Path, replay_file: Path) -> None:
    cheap, frontier = ScriptedTier("guess", [-0.1]), ScriptedTier("card_arrival", None)
    service, _ = make_service(
        tmp_path, replay_file, cheap, frontier,
        cascade={"default_threshold": 5.0, "thresholds": {"cheap": {"cs_intent": 0.01}}},
    )
    routing = (await service.chat(chat_body()))["routing"]
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [("cheap", "escalated"), ("frontier", "accepted")]
    assert routing["attempts"][0]["threshold"] == 0.01
    assert routing["saved_usd"] < 0  # paid for both tiers
    assert "inline" in routing["thresholds_version"]


async def test_failing_tier_escalates(tmp_path: Path, replay_file: Path) -> None:
    service, _ = make_service(
        tmp_path, replay_file, ScriptedTier("", None, fail=True), ScriptedTier("ok", None),
        cascade={"default_threshold": 0.5},
    )
    routing = (await service.chat(chat_body()))["routing"]
    assert [a["status"] for a in routing["attempts"]] == ["error", "accepted"]
    assert "tier down" in routing["attempts"][0]["error"] and routing["escalations"] == 1


async def test_a_cheap_tier_with_no_threshold_is_skipped_and_costs_nothing(tmp_path: Path, replay_file: Path) -> None:
    cheap, frontier = ScriptedTier("card_arrival", [-0.1]), ScriptedTier("big", None)
    service, _ = make_service(tmp_path, replay_file, cheap, frontier)  # no thresholds, no default
    routing = (await service.chat(chat_body()))["routing"]
    skip = routing["attempts"][0]
    assert (skip["tier"], skip["status"], skip["cost_usd"], skip["error"]) == ("cheap", "skipped", 0.0, None)
    assert "no threshold" in skip["reason"] and routing["escalations"] == 0
    assert cheap.requests == [] and routing["answered_by"] == "frontier"


async def test_a_tier_that_does_not_serve_the_task_is_skipped(tmp_path: Path, replay_file: Path) -> None:
    cheap, frontier = ScriptedTier("card_arrival", [-0.1]), ScriptedTier("big", None)
    data = small_config_dict(tmp_path, replay_file, cascade={"default_threshold": 5.0})
    data["tiers"][0]["tasks"] = ["chat"]
    config = parse_config(data)
    service = RouterService(config, {"cheap": cheap, "frontier": frontier}, query_log=QueryLog(config.storage))
    routing = (await service.chat(chat_body()))["routing"]
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [("cheap", "skipped"), ("frontier", "accepted")]
    assert routing["attempts"][0]["reason"] == "does not serve this task" and cheap.requests == []
    routing = (await service.chat(chat_body(model="routenlp/chat")))["routing"]
    assert routing["answered_by"] == "cheap"


def test_task_resolution(tmp_path: Path, replay_file: Path) -> None:
    service, _ = make_service(tmp_path, replay_file, ScriptedTier("", None), ScriptedTier("", None))
    assert service.resolve_task("routenlp/cs_intent").name == "cs_intent"
    assert service.resolve_task("cs_intent").name == "cs_intent"
    assert service.resolve_task("routenlp").name == "chat"  # the default task
    assert service.resolve_task("routenlp/chat", task="cs_intent").name == "cs_intent"
    with pytest.raises(UnknownTaskError) as err:
        service.resolve_task("routenlp/translate")
    assert "'translate'" in err.value.message and "routenlp/cs_intent" in err.value.message
    assert err.value.status_code == 404


def test_api_keys(tmp_path: Path, replay_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTENLP_API_KEYS", "env-key, other")
    (tmp_path / "keys").write_text("# one key a line\ncfg-key\n")
    service, _ = make_service(
        tmp_path, replay_file, ScriptedTier("", None), ScriptedTier("", None),
        server={"api_keys_file": str(tmp_path / "keys")},
    )
    service.gate.authenticate("Bearer cfg-key")
    service.gate.authenticate("Bearer env-key")
    for header, message in [(None, "missing API key"), ("Bearer nope", "invalid API key"), ("cfg-key", "invalid")]:
        with pytest.raises(AuthenticationError, match=message):
            service.gate.authenticate(header)


async def test_input_over_the_limit_is_refused(tmp_path: Path, replay_file: Path) -> None:
    service, _ = make_service(
        tmp_path, replay_file, ScriptedTier("", None), ScriptedTier("", None), server={"max_input_chars": 10}
    )
    with pytest.raises(PayloadTooLargeError, match="input is 21 characters; the limit is 10"):
        await service.chat(chat_body())


async def test_max_tokens_is_clamped_to_the_smallest_tier_cap(tmp_path: Path, replay_file: Path) -> None:
    cheap = ScriptedTier("x", [-0.1])
    service, _ = make_service(tmp_path, replay_file, cheap, ScriptedTier("", None), cascade={"default_threshold": 1})
    await service.chat(chat_body(max_tokens=100_000))
    await service.chat(chat_body())
    assert [r.max_tokens for r in cheap.requests] == [512, 128]


async def test_completions_use_the_task_template(tmp_path: Path, replay_file: Path) -> None:
    cheap = ScriptedTier(" card_arrival", [-0.1])
    service, _ = make_service(tmp_path, replay_file, cheap, ScriptedTier("", None), cascade={"default_threshold": 1})
    body = CompletionRequest.model_validate({"model": "routenlp/cs_intent", "prompt": "where is my card?"})
    response = await service.complete(body)
    assert response["object"] == "text_completion" and response["choices"][0]["text"] == " card_arrival"
    assert cheap.requests[0].prompt == "Answer with the intent label.\n\nwhere is my card?"


async def test_feedback_is_logged_and_matched(tmp_path: Path, replay_file: Path) -> None:
    service, config = make_service(tmp_path, replay_file, ScriptedTier("x", [-0.1]), ScriptedTier("", None))
    response = await service.chat(chat_body())
    await service.feedback(FeedbackRequest(response_id=response["id"], accepted=False, comment="wrong label"))
    with pytest.raises(UnknownResponseError, match="unknown response_id 'chatcmpl-unknown'"):
        await service.feedback(FeedbackRequest(response_id="chatcmpl-unknown", score=0.4))
    records = read_records(config.storage.log_uri, "feedback")
    assert [(r["response_id"], r["accepted"], r["matched"]) for r in records] == [(response["id"], False, True)]
    assert records[0]["answered_by"] == "frontier"  # no threshold: the cheap tier escalated


async def test_reconfigure_swaps_thresholds_and_logs_the_change(tmp_path: Path, replay_file: Path) -> None:
    cheap, frontier = ScriptedTier("x", [-0.5]), ScriptedTier("y", None)
    service, config = make_service(tmp_path, replay_file, cheap, frontier)
    assert (await service.chat(chat_body()))["routing"]["answered_by"] == "frontier"
    artifact = ThresholdTable(version="cal-001", thresholds={"cheap": {"cs_intent": 1.0}}).save(tmp_path / "t.json")
    assert service.live.reconfigure({"thresholds_path": str(artifact)}) == {
        "thresholds_version": "cal-001", "policy_version": "cheapest"
    }
    routing = (await service.chat(chat_body()))["routing"]
    assert routing["answered_by"] == "cheap" and routing["thresholds_version"] == "cal-001"
    # A broken artifact is refused and the running version stays.
    with pytest.raises(ArtifactError):
        service.live.reconfigure({"thresholds_path": str(tmp_path / "missing.json")})
    assert service.live.thresholds.version == "cal-001"
    [event] = read_records(config.storage.log_uri, "events")
    assert event["before"]["thresholds_version"] == "none" and event["after"]["thresholds_version"] == "cal-001"


async def test_concurrent_requests_each_get_their_own_answer(tmp_path: Path, replay_file: Path) -> None:
    service, config = make_service(
        tmp_path, replay_file, ScriptedTier("x", [-0.1]), ScriptedTier("", None), cascade={"default_threshold": 1}
    )
    responses = await asyncio.gather(*(service.chat(chat_body()) for _ in range(20)))
    assert len({r["id"] for r in responses}) == 20
    assert len(read_records(config.storage.log_uri, "queries")) == 20
