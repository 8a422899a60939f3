"""Server-sent events in OpenAI's chunk format, for answers that are whole and for answers still being made."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from routenlp_ray.cascade import CascadeOutcome, TierAttempt
from routenlp_ray.serving.metadata import live_stream_headers, routing_headers, system_fingerprint
from routenlp_ray.serving.responses import MODEL_PREFIX

logger = logging.getLogger("routenlp.router")


class ChunkWriter:
    """Builds one response's chunks: ``chat.completion.chunk`` for chat, ``text_completion`` otherwise.

    With ``include_usage`` (``stream_options``) every chunk carries ``usage: null`` and a last
    chunk with ``choices: []`` carries the usage, as OpenAI sends it; without it the usage rides
    on the finishing chunk. The ``routing`` object rides on the finishing and usage chunks, and
    also on the first chunk when it is known by then (helpers that rebuild a completion from a
    stream, such as the openai SDK's ``get_final_completion``, keep the first chunk's extra fields).
    """

    def __init__(self, response_id: str, chat: bool, model: str, fingerprint: str, include_usage: bool) -> None:
        self.chat, self.include_usage = chat, include_usage
        self._base: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
        }
        self._first = True

    def text(self, piece: str, routing: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"content": piece}
            if self._first:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
        chunk = self._chunk([choice])
        if self._first and routing is not None:
            chunk["routing"] = routing
        self._first = False
        return chunk

    def finish(self, finish_reason: str, usage: dict[str, int], routing: dict[str, Any]) -> list[dict[str, Any]]:
        """The finishing chunk, then (with ``include_usage``) the usage chunk."""
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        last = {**self._chunk([choice]), "routing": routing}
        if not self.include_usage:
            return [{**last, "usage": usage}]
        return [last, {**self._chunk([]), "usage": usage, "routing": routing}]

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {**self._base, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return chunk


def sse_event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


@dataclass
class StreamStart:
    """What is known when a tier's first piece of text is about to go out."""

    tier: str
    attempts: list[TierAttempt]


class QueueSink:
    """A ``cascade.TextSink`` that hands text to the response stream through a queue.

    ``started`` is set with the first piece; ``close`` (called when the cascade is done, in any
    way) ends the queue so the reader never waits on a finished cascade.
    """

    _END = object()

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.started = asyncio.Event()
        self.start: StreamStart | None = None
        # The start tier and the versions deciding this request; set before the cascade runs.
        self.context: dict[str, str] = {}

    def begin(self, tier: str, attempts: Sequence[TierAttempt]) -> None:
        self.start = StreamStart(tier, list(attempts))
        self.started.set()

    def write(self, text: str) -> None:
        self.queue.put_nowait(text)

    def close(self) -> None:
        self.queue.put_nowait(self._END)

    async def pieces(self) -> AsyncIterator[str]:
        while (item := await self.queue.get()) is not self._END:
            yield str(item)


@dataclass
class StreamedResponse:
    """A streamed answer: headers to send first, then SSE text (``data: ...`` lines, ``[DONE]`` last)."""

    headers: dict[str, str]
    events: AsyncIterator[str]


async def open_stream(
    job: asyncio.Future[tuple[CascadeOutcome, dict[str, Any]]],
    sink: QueueSink,
    respond: Callable[[CascadeOutcome, dict[str, Any]], dict[str, Any]],
    response_id: str,
    task: str,
    trace_id: str | None,
    chat: bool,
    include_usage: bool,
) -> StreamedResponse:
    """Answer as soon as the cascade (``job``, streaming into ``sink``) is done or its last tier starts to stream.

    A failure before any text went out raises here (the client gets an HTTP error); after that,
    the stream ends with an error event. ``respond`` builds the whole response body of a cascade
    that finished first.
    """
    job.add_done_callback(lambda done: _close_stream(sink, done))
    started = asyncio.ensure_future(sink.started.wait())
    try:
        await asyncio.wait({job, started}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the request timed out before any text was ready
        job.cancel()
        raise
    finally:
        started.cancel()
    if sink.start is None:
        outcome, routing = job.result()  # raises AllTiersFailedError
        response = respond(outcome, routing)
        writer = ChunkWriter(response_id, chat, response["model"], response["system_fingerprint"], include_usage)
        return StreamedResponse(
            routing_headers(response_id, routing),
            _buffered_events(writer, outcome.answer.text, response["usage"], routing, outcome.answer.finish_reason),
        )
    versions = (sink.context["thresholds_version"], sink.context["policy_version"])
    headers = live_stream_headers(response_id, trace_id, task, sink.context["start_tier"],
                                  sink.start.tier, sink.start.attempts, versions)
    writer = ChunkWriter(response_id, chat, f"{MODEL_PREFIX}/{task}", system_fingerprint(*versions), include_usage)
    return StreamedResponse(headers, _live_events(writer, sink, job))


async def _live_events(
    writer: ChunkWriter, sink: QueueSink, job: asyncio.Future[tuple[CascadeOutcome, dict[str, Any]]]
) -> AsyncIterator[str]:
    async for piece in sink.pieces():
        yield sse_event(writer.text(piece))
    try:
        outcome, routing = await job
    except Exception as exc:  # the tier broke mid-answer: tell the client in the stream itself
        logger.warning("a streamed answer broke off: %s", exc)
        yield sse_event({"error": {"message": str(exc), "type": "server_error", "param": None,
                                   "code": "stream_interrupted"}})
        yield SSE_DONE
        return
    answer = outcome.answer
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    for chunk in writer.finish(answer.finish_reason, usage, routing):
        yield sse_event(chunk)
    yield SSE_DONE


def _close_stream(sink: QueueSink, job: asyncio.Future[Any]) -> None:
    sink.close()
    if not job.cancelled():
        # Marks a failure as seen even when the client left before its error event: it is logged already.
        job.exception()


async def _buffered_events(
    writer: ChunkWriter, text: str, usage: dict[str, int], routing: dict[str, Any], finish_reason: str
) -> AsyncIterator[str]:
    """An answer that was whole before the stream began (a cheaper tier's, accepted): one text chunk."""
    yield sse_event(writer.text(text, routing))
    for chunk in writer.finish(finish_reason, usage, routing):
        yield sse_event(chunk)
    yield SSE_DONE
