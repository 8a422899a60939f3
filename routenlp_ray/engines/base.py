"""The one protocol every engine implements, and the values that cross it."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

from routenlp_ray.config.tiers import GenerationLimits


@dataclass(frozen=True)
class GenerationRequest:
    """What a tier is asked to do. Either ``messages`` (chat) or ``prompt`` (completion) is set."""

    request_id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    # None only between the router and a tier: the tier applies its own default (``within_limits``).
    max_tokens: int | None = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    task: str | None = None
    # The client's own text before the task template was applied; replay engines look it up.
    raw_input: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages or prompt must be set")

    @property
    def sampling_key(self) -> tuple[float, float]:
        """Requests with equal keys can share one batched generate call."""
        return (self.temperature, self.top_p)


@dataclass
class GenerationResult:
    """A tier's answer with what the cascade needs to score it and price it."""

    text: str
    token_logprobs: list[float] | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    finish_reason: str = "stop"
    model: str = ""
    usage_estimated: bool = False
    metadata: dict[str, object] = field(default_factory=dict)
    # Per generated token, the k largest logprobs of the model's distribution (for entropy scores).
    top_logprobs: list[list[float]] | None = None


@runtime_checkable
class Engine(Protocol):
    """Produces answers. Implementations: transformers, vLLM (Ray Serve LLM), OpenAI HTTP, replay."""

    name: str

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    async def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def check_health(self) -> None: ...


# What a streaming engine yields: text pieces in order, then one GenerationResult whose text is
# the pieces joined (the cascade scores and prices that result, as for ``generate``).
StreamItem = Union[str, GenerationResult]


@runtime_checkable
class StreamingEngine(Protocol):
    """The optional streaming method of an engine; the cascade uses it where an answer needs no acceptance."""

    def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]: ...


async def stream_generation(engine: Engine, request: GenerationRequest) -> AsyncIterator[StreamItem]:
    """The engine's own stream if it has one, else its whole answer as one piece."""
    if isinstance(engine, StreamingEngine):
        async for item in engine.generate_stream(request):
            yield item
        return
    result = await engine.generate(request)
    if result.text:
        yield result.text
    yield result


async def stream_pieces(result: GenerationResult, pieces: list[str]) -> AsyncIterator[StreamItem]:
    """Yield ready ``pieces`` (which join to ``result.text``), then ``result``."""
    for piece in pieces:
        yield piece
        # Each piece is its own event for the consumer, as a real engine's tokens are.
        await asyncio.sleep(0)
    yield result


class ConcurrentBatchMixin:
    """``generate_batch`` for engines with no native batching: run the requests concurrently."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:  # pragma: no cover - overridden
        raise NotImplementedError

    async def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))


def estimate_tokens(text: str) -> int:
    """Token count for engines that report none: about four characters per token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def request_text(request: GenerationRequest) -> str:
    """All text of a request, for token estimates."""
    if request.prompt is not None:
        return request.prompt
    return "\n".join(m.get("content", "") for m in request.messages or [])


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; returns the text and whether a stop was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def lookup_text(request: GenerationRequest) -> str:
    """The client's own text: the raw input if known, else the last user message, else the prompt."""
    if request.raw_input is not None:
        return request.raw_input
    if request.messages:
        for message in reversed(request.messages):
            if message.get("role") == "user":
                return message.get("content", "")
    return request.prompt or ""


class PromptingTask(Protocol):
    """What building a request needs of a task (``tasks.TaskSpec`` is one)."""

    name: str

    def apply_to_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]: ...


def task_request(task: PromptingTask, request_id: str, text: str, max_tokens: int) -> GenerationRequest:
    """The request a tier gets for ``text`` sent to ``task``: its prompts applied as the router applies them."""
    return GenerationRequest(
        request_id=request_id,
        messages=task.apply_to_messages([{"role": "user", "content": text}]),
        max_tokens=max_tokens,
        task=task.name,
        raw_input=text,
    )


def generate_isolating_failures(
    engine: Engine, requests: list[GenerationRequest]
) -> list[GenerationResult | BaseException]:
    """One batch call; if it fails, one call per request so one bad input cannot sink the rest."""
    try:
        return list(asyncio.run(engine.generate_batch(requests)))
    except Exception:
        outputs: list[GenerationResult | BaseException] = []
        for request in requests:
            try:
                outputs.append(asyncio.run(engine.generate(request)))
            except Exception as exc:
                outputs.append(exc)
        return outputs


def _limited(request: GenerationRequest, limits: GenerationLimits) -> GenerationRequest:
    wanted = request.max_tokens if request.max_tokens is not None else limits.default_max_tokens
    return dataclasses.replace(request, max_tokens=min(wanted, limits.max_tokens))


def within_limits(
    call: Callable[[GenerationRequest], Awaitable[GenerationResult]], limits: GenerationLimits
) -> Callable[[GenerationRequest], Awaitable[GenerationResult]]:
    """``call`` (a tier's async callable) with ``limits`` applied to each request's ``max_tokens``.

    A request with no ``max_tokens`` gets the tier's ``default_max_tokens``, and any ask is clamped
    to its ``max_tokens``: each tier answers within its own limits, so a frontier's long answer is
    not cut to the default of the cheapest tier.
    """

    async def limited(request: GenerationRequest) -> GenerationResult:
        return await call(_limited(request, limits))

    return limited


def stream_within_limits(
    stream: Callable[[GenerationRequest], AsyncIterator[StreamItem]] | None, limits: GenerationLimits
) -> Callable[[GenerationRequest], AsyncIterator[StreamItem]] | None:
    """A tier's streaming call with its ``limits`` applied, as ``within_limits`` does for ``call``."""
    if stream is None:
        return None

    def limited(request: GenerationRequest) -> AsyncIterator[StreamItem]:
        return stream(_limited(request, limits))

    return limited
