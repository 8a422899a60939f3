"""Read OpenAI-format responses (from the openai SDK or vLLM's protocol models) into a GenerationResult."""

from __future__ import annotations

import time
from typing import Any

from routenlp_ray.engines.base import GenerationResult, estimate_tokens


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


class StreamAccumulator:
    """Builds a GenerationResult from OpenAI streaming chunks (as dicts), handing back each chunk's text.

    ``stream_options.include_usage`` puts the token usage on a last chunk with no choices; a
    stream without it gets usage estimated from the text.
    """

    def __init__(self, *, chat: bool, model: str, started: float) -> None:
        self.chat, self.model, self.started = chat, model, started
        self.pieces: list[str] = []
        self.logprobs: list[float] = []
        self.finish_reason = "stop"
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> str:
        """Take one chunk; returns its text (empty for role-only, finish and usage chunks)."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text = ""
        for choice in chunk.get("choices") or []:
            piece = ((choice.get("delta") or {}).get("content") if self.chat else choice.get("text")) or ""
            text += piece
            logprobs = choice.get("logprobs") or {}
            if self.chat:
                self.logprobs.extend(entry["logprob"] for entry in logprobs.get("content") or [])
            else:
                self.logprobs.extend(lp for lp in logprobs.get("token_logprobs") or [] if lp is not None)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if text:
            self.pieces.append(text)
        return text

    def result(self, prompt_text: str) -> GenerationResult:
        text = "".join(self.pieces)
        usage = self.usage or {}
        return GenerationResult(
            text=text,
            token_logprobs=self.logprobs or None,
            prompt_tokens=int(usage.get("prompt_tokens") or estimate_tokens(prompt_text)),
            completion_tokens=int(usage.get("completion_tokens") or len(self.logprobs) or estimate_tokens(text)),
            latency_ms=(time.perf_counter() - self.started) * 1000,
            finish_reason=self.finish_reason,
            model=self.model,
            usage_estimated=self.usage is None,
        )
