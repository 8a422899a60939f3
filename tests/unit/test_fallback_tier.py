"""``cascade.fallback_tier``: a valid query no tier serving its task could answer still gets an answer.

The embedded default's replay frontier knows only recorded inputs, and no cheaper tier serves
fin_summarization, so a new fin_summarization query used to be a 503. These tests build the same
shape without Ray: a task-limited cheap tier, a general tier that serves only chat, and a real
``ReplayEngine`` frontier that misses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray import AllTiersFailedError, ConfigError, EngineError
from routenlp_ray.cascade import FALLBACK_TIER, SKIP_UNSERVED, CascadeOutcome, CascadeTier, run_cascade
from routenlp_ray.config import Pricing, ReplayEngineConfig, load_config, parse_config
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.engines.base import StreamItem
from routenlp_ray.engines.replay import ReplayEngine
from routenlp_ray.serving import ChatCompletionRequest, RouterService
from routenlp_ray.telemetry import QueryLog, read_records
from tests.conftest import REPO_ROOT

NEW_FILING = "Quarterly filing never recorded: revenue rose 4% while margins narrowed."


class Tier:
    """A tier callable with a fixed answer (or an error), counting its calls; streams if asked to."""

    def __init__(self, text: str = "", logprobs: list[float] | None = None, fail: bool = False) -> None:
        self.text, self.logprobs, self.fail = text, logprobs, fail
        self.requests: list[GenerationRequest] = []

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if self.fail:
            raise EngineError("tier down")
        return GenerationResult(self.text, self.logprobs, prompt_tokens=200, completion_tokens=20, latency_ms=1.0)


class StreamingTier(Tier):
    def __init__(self, text: str, logprobs: list[float] | None) -> None:
        super().__init__(text, logprobs)
        self.streamed = 0

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        self.streamed += 1
        yield self.text
        yield await self(request)


class SpyMetrics:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, CascadeOutcome, float]] = []
        self.failures: list[tuple[str, str]] = []

    def record_outcome(self, task: str, outcome: CascadeOutcome, latency_ms: float, saved_usd: float) -> None:
        self.outcomes.append((task, outcome, saved_usd))

    def record_failure(self, task: str, reason: str) -> None:
        self.failures.append((task, reason))

    def record_rejection(self, reason: str) -> None:
        return None


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text(
        '{"task": "cs_intent", "input": "where is my new card?", "reference": "card_arrival"}\n'
        '{"task": "fin_summarization", "input": "Recorded filing.", "reference": "A recorded summary."}\n'
    )
    return path


def embedded_like(tmp_path: Path, records: Path, **cascade: Any) -> dict[str, Any]:
    """The embedded default's shape: a cs_intent-only tier, a chat-only general tier, a replay frontier."""
    replay = {"type": "replay", "records": [str(records)]}
    return {
        "tiers": [
            {"name": "specialist", "engine": replay, "tasks": ["cs_intent"],
             "pricing": {"input_per_1m": 0.001, "output_per_1m": 0.001}},
            {"name": "smollm2", "engine": replay, "tasks": ["chat"],
             "pricing": {"input_per_1m": 0.01, "output_per_1m": 0.02}},
            {"name": "frontier", "engine": replay, "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}},
        ],
        "tasks": [{"name": "chat", "metric": "none"}, {"name": "cs_intent"}, {"name": "fin_summarization"}],
        "cascade": {"default_threshold": 1.0, **cascade},
        "storage": {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")},
        "server": {"default_task": "chat"},
    }


def service_for(tmp_path: Path, records: Path, smollm2: Tier, specialist: Tier | None = None,
                **cascade: Any) -> tuple[RouterService, SpyMetrics]:
    config = parse_config(embedded_like(tmp_path, records, **cascade))
    frontier = ReplayEngine(ReplayEngineConfig(records=[str(records)]), name="frontier")
    metrics = SpyMetrics()
    tiers = {"specialist": specialist or Tier("card_arrival", [-0.1]), "smollm2": smollm2,
             "frontier": frontier.generate}
    return RouterService(config, tiers, query_log=QueryLog(config.storage), metrics=metrics), metrics


def summarise(text: str = NEW_FILING, **kwargs: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "routenlp/fin_summarization", "messages": [{"role": "user", "content": text}], **kwargs})


# -- config -------------------------------------------------------------------------------------
def test_the_embedded_default_falls_back_to_smollm2() -> None:
    config = load_config(REPO_ROOT / "serve_config.local.yaml")
    assert config.cascade.fallback_tier == "smollm2"
    assert not config.tier("smollm2").serves("fin_summarization")  # the case the fallback is for


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        ("ghost", "cascade.fallback_tier ('ghost') is not a configured tier; known tiers: "
                  "['specialist', 'smollm2', 'frontier']"),
        ("frontier", "cascade.fallback_tier ('frontier') is the last tier"),
    ],
)
def test_a_bad_fallback_tier_fails_at_load_naming_field_and_value(tmp_path: Path, records: Path, fallback: str,
                                                                  message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(embedded_like(tmp_path, records, fallback_tier=fallback))
    assert message in str(err.value)


def test_a_specialist_cannot_be_the_fallback_tier(tmp_path: Path, records: Path) -> None:
    data = embedded_like(tmp_path, records, fallback_tier="specialist")
    data["tiers"][0]["engine"] = {"type": "specialist", "path": "artifacts/specialists/x"}
    with pytest.raises(ConfigError, match=r"cascade.fallback_tier \('specialist'\) is a specialist tier"):
        parse_config(data)


def test_fallback_tier_is_off_by_default(tmp_path: Path, records: Path) -> None:
    assert parse_config(embedded_like(tmp_path, records)).cascade.fallback_tier is None


# -- the cascade --------------------------------------------------------------------------------
PRICE = Pricing(input_per_1m=1.0, output_per_1m=2.0)
REQUEST = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "x"}], task="fin_summarization")


def cascade(*calls: Any, tasks: tuple[frozenset[str] | None, ...]) -> list[CascadeTier]:
    return [CascadeTier(name=f"t{i}", call=c, pricing=PRICE, timeout_s=1.0, tasks=t)
            for i, (c, t) in enumerate(zip(calls, tasks))]


def mean_nll(result: GenerationResult) -> float | None:
    return -sum(result.token_logprobs) / len(result.token_logprobs) if result.token_logprobs else None


async def test_the_fallback_is_not_asked_when_the_frontier_answers() -> None:
    general, frontier = Tier("general", [-0.1]), Tier("frontier answer", None)
    tiers = cascade(general, frontier, tasks=(frozenset({"chat"}), None))
    outcome = await run_cascade(REQUEST, tiers, 0, lambda t: 1.0, mean_nll, fallback=tiers[0])
    assert outcome.answered_by == "t1" and not outcome.fallback and general.requests == []


async def test_an_escalated_answer_wins_over_the_fallback_tier() -> None:
    # The serving tier answered (unsure) and the frontier failed: that answer is the fallback, as before.
    unsure, general = Tier("unsure", [-3.0]), Tier("general", [-0.1])
    tiers = cascade(unsure, general, Tier(fail=True), tasks=(None, frozenset({"chat"}), None))
    outcome = await run_cascade(REQUEST, tiers, 0, lambda t: 0.5, mean_nll, fallback=tiers[1])
    assert outcome.answered_by == "t0" and outcome.fallback and general.requests == []


async def test_the_fallback_tier_answers_a_task_it_does_not_serve_when_every_serving_tier_failed() -> None:
    general = Tier("a summary", [-0.4])
    tiers = cascade(general, Tier(fail=True), tasks=(frozenset({"chat"}), None))
    outcome = await run_cascade(REQUEST, tiers, 0, lambda t: 1.0, mean_nll, fallback=tiers[0])
    assert outcome.answered_by == "t0" and outcome.fallback and outcome.answer.text == "a summary"
    assert [(a.tier, a.status, a.reason) for a in outcome.attempts] == [
        ("t0", "skipped", SKIP_UNSERVED), ("t1", "error", None), ("t0", "fallback", FALLBACK_TIER)]
    # Accepted unconditionally: no threshold shown, its cost counted.
    assert outcome.attempts[-1].threshold is None and outcome.cost_usd == pytest.approx((200 + 40) / 1e6)


async def test_a_tier_that_already_failed_is_not_asked_twice() -> None:
    general = Tier(fail=True)
    tiers = cascade(general, Tier(fail=True), tasks=(None, None))
    with pytest.raises(AllTiersFailedError):
        await run_cascade(REQUEST, tiers, 0, lambda t: 1.0, mean_nll, fallback=tiers[0])
    assert len(general.requests) == 1


async def test_a_failing_fallback_leaves_a_503_naming_every_tier() -> None:
    tiers = cascade(Tier(fail=True), Tier(fail=True), tasks=(frozenset({"chat"}), None))
    with pytest.raises(AllTiersFailedError) as err:
        await run_cascade(REQUEST, tiers, 0, lambda t: 1.0, mean_nll, fallback=tiers[0])
    assert str(err.value) == (
        "every tier failed: t0: skipped (does not serve this task); t1: EngineError: tier down; "
        "t0: EngineError: tier down"
    )


# -- the service --------------------------------------------------------------------------------
async def test_a_new_fin_summarization_query_gets_the_fallback_answer(tmp_path: Path, records: Path) -> None:
    smollm2 = Tier("Revenue up 4%, margins narrower.", [-0.6, -0.9])
    service, metrics = service_for(tmp_path, records, smollm2, fallback_tier="smollm2")
    response = await service.chat(summarise(), trace_id="t-1")
    routing = response["routing"]
    assert response["choices"][0]["message"]["content"] == "Revenue up 4%, margins narrower."
    assert routing["answered_by"] == "smollm2" and routing["fallback"] is True
    assert routing["met_quality_bar"] is False and routing["saved_usd"] == 0.0
    attempts = [(a["tier"], a["status"]) for a in routing["attempts"]]
    assert attempts == [("specialist", "skipped"), ("smollm2", "skipped"), ("frontier", "error"),
                        ("smollm2", "fallback")]
    assert routing["attempts"][2]["error"].startswith("ReplayMissError: tier 'frontier' has no recorded answer")
    assert routing["attempts"][3]["reason"] == FALLBACK_TIER
    # Cost: what SmolLM2 cost; the baseline is the frontier's price on the same tokens (it never answered).
    assert routing["cost_usd"] == pytest.approx((200 * 0.01 + 20 * 0.02) / 1e6)
    assert routing["frontier_cost_usd"] == pytest.approx((200 * 2.5 + 20 * 10.0) / 1e6)
    # SmolLM2 was asked with the task's own prompt (system prompt and template), not a bare chat turn.
    [sent] = smollm2.requests
    assert sent.task == "fin_summarization" and sent.raw_input == NEW_FILING
    assert sent.messages[0]["role"] == "system" and "summar" in sent.messages[0]["content"].lower()
    [(task, outcome, saved)] = metrics.outcomes
    assert task == "fin_summarization" and outcome.fallback and saved == 0.0 and metrics.failures == []
    service.query_log.close()
    [record] = read_records(str(tmp_path / "log"), "queries")
    assert record["status"] == "ok" and record["fallback"] is True and record["answered_by"] == "smollm2"
    assert record["answer"] == "Revenue up 4%, margins narrower." and record["trace_id"] == "t-1"
    assert record["saved_usd"] == 0.0 and record["attempts"] == routing["attempts"]


async def test_a_recorded_query_is_still_answered_by_the_frontier(tmp_path: Path, records: Path) -> None:
    smollm2 = Tier("unused", [-0.1])
    service, _ = service_for(tmp_path, records, smollm2, fallback_tier="smollm2")
    routing = (await service.chat(summarise("Recorded filing.")))["routing"]
    assert routing["answered_by"] == "frontier" and routing["fallback"] is False and smollm2.requests == []
    service.query_log.close()


async def test_without_a_fallback_tier_the_new_query_is_a_503(tmp_path: Path, records: Path) -> None:
    smollm2 = Tier("unused", [-0.1])
    service, metrics = service_for(tmp_path, records, smollm2)
    with pytest.raises(AllTiersFailedError, match="specialist: skipped .*frontier: ReplayMissError"):
        await service.chat(summarise())
    assert smollm2.requests == [] and metrics.failures == [("fin_summarization", "all_tiers_failed")]
    service.query_log.close()


async def test_when_the_fallback_fails_too_the_503_names_it_and_is_logged(tmp_path: Path, records: Path) -> None:
    service, metrics = service_for(tmp_path, records, Tier(fail=True), fallback_tier="smollm2")
    with pytest.raises(AllTiersFailedError) as err:
        await service.chat(summarise())
    message = str(err.value)
    assert "frontier: ReplayMissError" in message and message.endswith("smollm2: EngineError: tier down")
    assert metrics.failures == [("fin_summarization", "all_tiers_failed")] and metrics.outcomes == []
    service.query_log.close()
    [record] = read_records(str(tmp_path / "log"), "queries")
    assert record["status"] == "failed" and record["error"] == message


async def test_a_streamed_fallback_is_buffered_so_its_headers_say_fallback(tmp_path: Path, records: Path) -> None:
    smollm2 = StreamingTier("Revenue up 4%.", [-0.5])
    service, _ = service_for(tmp_path, records, smollm2, fallback_tier="smollm2")
    streamed = await service.chat_stream(summarise(stream=True))
    assert streamed.headers["x-routenlp-fallback"] == "true"
    assert streamed.headers["x-routenlp-answered-by"] == "smollm2"
    assert streamed.headers["x-routenlp-streaming"] == "buffered" and smollm2.streamed == 0
    events = [line async for line in streamed.events]
    assert "Revenue up 4%." in events[0] and events[-1] == "data: [DONE]\n\n"
    service.query_log.close()
