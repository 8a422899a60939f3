"""Streaming on the request path: live text from the last tier, OpenAI's chunk shapes, routing headers, trace ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from routenlp_ray import AllTiersFailedError, EngineError, UnknownTaskError
from routenlp_ray.config import OpenAIEngineConfig, ReplayEngineConfig, parse_config
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.engines.base import StreamItem, stream_generation
from routenlp_ray.engines.openai_http import OpenAICompatibleEngine
from routenlp_ray.engines.replay import ReplayEngine
from routenlp_ray.serving import ChatCompletionRequest, CompletionRequest, FeedbackRequest, RouterService
from routenlp_ray.serving.metadata import system_fingerprint
from routenlp_ray.telemetry import QueryLog, read_records
from tests.conftest import small_config_dict


class ScriptedTier:
    """A tier collaborator with a fixed answer; it streams only if given ``stream_pieces``."""

    def __init__(self, text: str, logprobs: list[float] | None, fail: bool = False) -> None:
        self.text, self.logprobs, self.fail = text, logprobs, fail
        self.calls = 0

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        if self.fail:
            raise EngineError("tier down")
        return GenerationResult(self.text, self.logprobs, prompt_tokens=100, completion_tokens=10, latency_ms=1.0)


class GatedStreamingTier(ScriptedTier):
    """Streams its first piece, then waits for ``release`` before it finishes the answer."""

    def __init__(self, pieces: list[str], break_after_first: bool = False) -> None:
        super().__init__("".join(pieces), [-0.5] * len(pieces))
        self.pieces, self.break_after_first = pieces, break_after_first
        self.release = asyncio.Event()
        self.finished = False

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        yield self.pieces[0]
        await self.release.wait()
        if self.break_after_first:
            raise EngineError("connection reset mid-answer")
        for piece in self.pieces[1:]:
            yield piece
        self.finished = True
        yield GenerationResult(self.text, self.logprobs, prompt_tokens=100, completion_tokens=len(self.pieces),
                               latency_ms=1.0)


def make_service(tmp_path: Path, replay_file: Path, cheap: ScriptedTier, frontier: ScriptedTier, **overrides):
    config = parse_config(small_config_dict(tmp_path, replay_file, **overrides))
    return RouterService(config, {"cheap": cheap, "frontier": frontier}, query_log=QueryLog(config.storage)), config


def chat_body(**kwargs) -> ChatCompletionRequest:
    payload = {"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "where is my new card?"}],
               "stream": True}
    payload.update(kwargs)
    return ChatCompletionRequest.model_validate(payload)


def parse_sse(lines: list[str]) -> list[dict]:
    assert lines[-1] == "data: [DONE]\n\n"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def test_the_last_tier_streams_its_first_text_before_its_answer_is_complete(tmp_path: Path,
                                                                                   replay_file: Path) -> None:
    cheap = ScriptedTier("unsure", [-5.0])
    frontier = GatedStreamingTier(["card_", "arrival"])
    service, config = make_service(tmp_path, replay_file, cheap, frontier, cascade={"default_threshold": 0.5})
    # Were the answer buffered, nothing would come before ``release``: the guard turns that hang into a failure.
    streamed = await asyncio.wait_for(service.chat_stream(chat_body(), trace_id="client-trace-1"), timeout=60)
    events = streamed.events.__aiter__()
    first = json.loads((await asyncio.wait_for(events.__anext__(), timeout=60)).removeprefix("data: "))
    # The client holds the first text while the tier is still making its answer.
    assert not frontier.finished and first["choices"][0]["delta"] == {"role": "assistant", "content": "card_"}
    assert first["id"].startswith("chatcmpl-") and "routing" not in first
    headers = streamed.headers
    assert headers["x-routenlp-answered-by"] == "frontier" and headers["x-routenlp-streaming"] == "live"
    assert headers["x-routenlp-escalations"] == "1" and headers["x-routenlp-response-id"] == first["id"]
    assert headers["x-routenlp-request-id"] == "client-trace-1" and "x-routenlp-cost-usd" not in headers
    frontier.release.set()
    rest = parse_sse([line async for line in events])
    assert [c["choices"][0]["delta"].get("content") for c in rest[:-1]] == ["arrival"]
    routing = rest[-1]["routing"]
    assert rest[-1]["choices"][0]["finish_reason"] == "stop" and rest[-1]["usage"]["completion_tokens"] == 2
    assert routing["answered_by"] == "frontier" and routing["attempts"][-1]["streamed"] is True
    assert routing["cost_usd"] > 0 and routing["trace_id"] == "client-trace-1"
    service.query_log.close()
    [record] = read_records(config.storage.log_uri, "queries")
    assert record["id"] == first["id"] and record["trace_id"] == "client-trace-1" and record["answer"] == "card_arrival"


async def test_include_usage_sends_null_usage_then_a_choiceless_usage_chunk(tmp_path: Path, replay_file: Path) -> None:
    cheap = ScriptedTier("card_arrival", [-0.1])
    service, _ = make_service(tmp_path, replay_file, cheap, ScriptedTier("x", None), cascade={"default_threshold": 0.5})
    streamed = await service.chat_stream(chat_body(stream_options={"include_usage": True}))
    chunks = parse_sse([line async for line in streamed.events])
    content, finish, usage = chunks
    assert content["usage"] is None and finish["usage"] is None
    assert content["choices"][0]["delta"]["content"] == "card_arrival"
    # The cheap answer was whole before the stream began: its routing rides on the first chunk too.
    assert content["routing"]["answered_by"] == "cheap" and finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 110
    assert usage["routing"] == content["routing"]
    assert streamed.headers["x-routenlp-streaming"] == "buffered"
    assert float(streamed.headers["x-routenlp-cost-usd"]) == pytest.approx(content["routing"]["cost_usd"])
    assert content["system_fingerprint"] == system_fingerprint(
        content["routing"]["thresholds_version"], content["routing"]["policy_version"])


async def test_a_failure_before_any_text_is_an_error_not_a_stream(tmp_path: Path, replay_file: Path) -> None:
    service, _ = make_service(tmp_path, replay_file, ScriptedTier("", None, fail=True),
                              ScriptedTier("", None, fail=True))
    with pytest.raises(AllTiersFailedError):
        await service.chat_stream(chat_body())


async def test_a_tier_that_breaks_mid_stream_ends_the_stream_with_an_error(tmp_path: Path,
                                                                           replay_file: Path) -> None:
    frontier = GatedStreamingTier(["card_", "arrival"], break_after_first=True)
    service, config = make_service(tmp_path, replay_file, ScriptedTier("unsure", [-5.0]), frontier,
                                   cascade={"default_threshold": 0.5})
    streamed = await service.chat_stream(chat_body())
    frontier.release.set()
    chunks = parse_sse([line async for line in streamed.events])
    assert chunks[0]["choices"][0]["delta"]["content"] == "card_"
    assert chunks[-1]["error"]["code"] == "stream_interrupted" and "mid-answer" in chunks[-1]["error"]["message"]
    service.query_log.close()
    [record] = read_records(config.storage.log_uri, "queries")
    assert record["status"] == "failed" and "began streaming" in record["error"]


async def test_json_answers_carry_fingerprint_and_trace_id_and_models_retrieve_one(tmp_path: Path,
                                                                                   replay_file: Path) -> None:
    service, config = make_service(tmp_path, replay_file, ScriptedTier("card_arrival", [-0.1]),
                                   ScriptedTier("x", None), cascade={"default_threshold": 0.5})
    body = await service.chat(chat_body(stream=False), trace_id="t-9")
    assert body["routing"]["trace_id"] == "t-9" and body["system_fingerprint"].startswith("routenlp:")
    completion = await service.complete(
        CompletionRequest.model_validate({"model": "routenlp/cs_intent", "prompt": "where is my new card?"}), "t-10")
    assert completion["routing"]["trace_id"] == "t-10"
    await service.feedback(FeedbackRequest(response_id=body["id"], accepted=True), trace_id="t-11")
    assert service.model("routenlp/cs_intent")["id"] == "routenlp/cs_intent"
    assert service.model("cs_intent") == {**service.models()["data"][1], "created": service.model("cs_intent")["created"]}
    with pytest.raises(UnknownTaskError, match="nope"):
        service.model("routenlp/nope")
    service.query_log.close()
    assert [r["trace_id"] for r in read_records(config.storage.log_uri, "queries")] == ["t-9", "t-10"]
    assert [r["trace_id"] for r in read_records(config.storage.log_uri, "feedback")] == ["t-11"]


async def test_replay_streams_word_pieces_that_join_to_its_answer(tmp_path: Path) -> None:
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"task": "chat", "input": "hi", "reference": "Hello there,  how can I help?"}) + "\n")
    engine = ReplayEngine(ReplayEngineConfig(records=[str(records)]))
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "hi"}], task="chat")
    items = [item async for item in stream_generation(engine, request)]
    pieces, result = items[:-1], items[-1]
    assert pieces == ["Hello ", "there,  ", "how ", "can ", "I ", "help?"]
    assert isinstance(result, GenerationResult) and "".join(pieces) == result.text


async def test_openai_engine_streams_pieces_and_reads_usage_and_logprobs() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Par"},
                                  "logprobs": {"content": [{"token": "Par", "logprob": -0.5, "bytes": None,
                                                            "top_logprobs": []}]}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "is"},
                                  "logprobs": {"content": [{"token": "is", "logprob": -0.25, "bytes": None,
                                                            "top_logprobs": []}]}, "finish_reason": "stop"}]},
            {**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}},
        ]
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    config = OpenAIEngineConfig(base_url="http://tier.test/v1", model="m", api_key_env=None)
    engine = OpenAICompatibleEngine(config, name="hosted",
                                    http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "capital of France?"}])
    items = [item async for item in engine.generate_stream(request)]
    assert items[:-1] == ["Par", "is"]
    result = items[-1]
    assert (result.text, result.token_logprobs, result.prompt_tokens, result.completion_tokens) == (
        "Paris", [-0.5, -0.25], 11, 2)
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}


async def test_serve_llm_client_reads_ray_serve_llm_sse_batches_into_pieces_and_a_result() -> None:
    from routenlp_ray.config import load_config
    from routenlp_ray.engines.serve_llm import ServeLLMTierClient
    from tests.conftest import REPO_ROOT

    tier = load_config(REPO_ROOT / "serve_config.yaml").tier("small")
    base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "small"}

    def sse(chunk: dict) -> str:
        return f"data: {json.dumps({**base, **chunk})}\n\n"

    def piece(text: str, logprob: float, finish: str | None = None) -> str:
        return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish, "logprobs": {
            "content": [{"token": text, "logprob": logprob, "bytes": None, "top_logprobs": []}]}}]})

    # With batching on, Ray Serve LLM's LLMServer yields lists of SSE strings.
    batches = [[piece("card", -0.1)], [piece("_arrival", -0.3, "stop"),
               sse({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}})],
               ["data: [DONE]\n\n"]]
    sent: list[object] = []

    class FakeHandle:
        """Stands in for ``LLMServer``'s handle with ``stream=True``."""

        def options(self, **kwargs: object) -> "FakeHandle":
            assert kwargs == {"stream": True}
            return self

        class chat:  # noqa: N801 - mirrors the handle's method attribute
            @staticmethod
            async def remote(body: object) -> AsyncIterator[list[str]]:
                sent.append(body)
                for batch in batches:
                    yield batch

    client = ServeLLMTierClient(FakeHandle(), tier)
    # The protocol models need the vllm extra; the request object is the handle's business here.
    client.build_request = lambda request, stream=False: ("chat", {"stream": stream})  # type: ignore[method-assign]
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "where is my card?"}])
    items = [item async for item in client.stream(request)]
    assert items[:-1] == ["card", "_arrival"] and sent == [{"stream": True}]
    result = items[-1]
    assert (result.text, result.token_logprobs, result.prompt_tokens, result.completion_tokens) == (
        "card_arrival", [-0.1, -0.3], 20, 2)
