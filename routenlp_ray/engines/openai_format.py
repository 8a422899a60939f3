"""Read OpenAI-format responses (from the openai SDK or vLLM's protocol models) into a GenerationResult."""

from __future__ import annotations

import time
from typing import Any

from routenlp_ray.engines.base import GenerationResult


def result_from_openai_response(response: Any, *, chat: bool, model: str, started: float) -> GenerationResult:
    """Works on any object with the OpenAI attribute layout (``choices[0]``, ``usage``)."""
    choice = response.choices[0]
    logprobs_obj = getattr(choice, "logprobs", None)
    if chat:
        text = choice.message.content or ""
        entries = getattr(logprobs_obj, "content", None) if logprobs_obj is not None else None
        logprobs = [entry.logprob for entry in entries] if entries else None
    else:
        text = choice.text or ""
        values = getattr(logprobs_obj, "token_logprobs", None) if logprobs_obj is not None else None
        logprobs = [lp for lp in values if lp is not None] if values else None
    usage = getattr(response, "usage", None)
    return GenerationResult(
        text=text,
        token_logprobs=logprobs,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency_ms=(time.perf_counter() - started) * 1000,
        finish_reason=choice.finish_reason or "stop",
        model=model,
    )
