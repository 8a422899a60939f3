"""Server-sent events in OpenAI's chunk format, for answers that are whole and for answers still being made."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from routenlp_ray.cascade import TierAttempt


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
