"""Any OpenAI-compatible endpoint (a hosted frontier model, a vLLM server) as a tier."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from routenlp_ray._exceptions import EngineError, TierTimeoutError
from routenlp_ray.config.tiers import OpenAIEngineConfig
from routenlp_ray.engines.base import (
    ConcurrentBatchMixin,
    GenerationRequest,
    GenerationResult,
    StreamItem,
    request_text,
)
from routenlp_ray.engines.openai_format import StreamAccumulator, result_from_openai_response


class OpenAICompatibleEngine(ConcurrentBatchMixin):
    """Calls ``/v1/chat/completions`` or ``/v1/completions`` with the official ``openai`` client.

    The client's own retry loop (exponential backoff on connection errors, 408/409/429/5xx)
    gives the bounded retries; ``timeout_s`` bounds each attempt.
    """

    def __init__(self, config: OpenAIEngineConfig, name: str = "openai", http_client: Any = None) -> None:
        from openai import AsyncOpenAI

        self.name = name
        self.config = config
        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._client = AsyncOpenAI(
            base_url=config.base_url,
            api_key=api_key or "unused",
            timeout=config.timeout_s,
            max_retries=config.max_retries,
            http_client=http_client,
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        import openai

        started = time.perf_counter()
        common: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            common["stop"] = list(request.stop)
        try:
            if request.messages is not None:
                if self.config.logprobs:
                    common["logprobs"] = True
                response = await self._client.chat.completions.create(messages=request.messages, **common)
            else:
                if self.config.logprobs:
                    common["logprobs"] = 1
                response = await self._client.completions.create(prompt=request.prompt, **common)
        except openai.APITimeoutError as exc:
            raise TierTimeoutError(f"tier {self.name!r} timed out after {self.config.timeout_s}s") from exc
        except openai.OpenAIError as exc:
            raise EngineError(f"tier {self.name!r} endpoint {self.config.base_url!r} failed: {exc}") from exc
        return result_from_openai_response(response, chat=request.messages is not None, model=self.name, started=started)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The endpoint's own stream (``stream: true``, usage included), piece by piece."""
        import openai

        started = time.perf_counter()
        chat = request.messages is not None
        common: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            common["stop"] = list(request.stop)
        if self.config.logprobs:
            common["logprobs"] = True if chat else 1
        accumulator = StreamAccumulator(chat=chat, model=self.name, started=started)
        try:
            if chat:
                stream = await self._client.chat.completions.create(messages=request.messages, **common)
            else:
                stream = await self._client.completions.create(prompt=request.prompt, **common)
            async for chunk in stream:
                text = accumulator.add(chunk.model_dump())
                if text:
                    yield text
        except openai.APITimeoutError as exc:
            raise TierTimeoutError(f"tier {self.name!r} timed out after {self.config.timeout_s}s") from exc
        except openai.OpenAIError as exc:
            raise EngineError(f"tier {self.name!r} endpoint {self.config.base_url!r} failed: {exc}") from exc
        yield accumulator.result(request_text(request))

    def check_health(self) -> None:
        return None
