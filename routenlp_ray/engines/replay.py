"""Answers from recorded responses: the CPU stand-in for a frontier tier, and the benchmark oracle."""

from __future__ import annotations

import glob
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from routenlp_ray._exceptions import ConfigError, ReplayMissError
from routenlp_ray._jsonl import iter_jsonl
from routenlp_ray.config.tiers import ReplayEngineConfig
from routenlp_ray.engines.base import (
    ConcurrentBatchMixin,
    GenerationRequest,
    GenerationResult,
    StreamItem,
    estimate_tokens,
    lookup_text,
    request_text,
    stream_pieces,
)
from routenlp_ray.tasks.data import answer_text

# Word by word, each piece keeping the whitespace after it, so the pieces join to the answer.
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


@dataclass(frozen=True)
class Recorded:
    text: str
    token_logprobs: list[float] | None


def normalise(text: str) -> str:
    return " ".join(text.split())


def truncate(recorded: Recorded, max_tokens: int | None) -> tuple[str, list[float] | None, str]:
    """The recorded answer cut to ``max_tokens``, as a model stopped by its limit would return it.

    Tokens are counted as the engine reports them: the recorded logprobs where there are any,
    else about four characters a token (``estimate_tokens``).
    """
    logprobs = recorded.token_logprobs
    tokens = len(logprobs) if logprobs else estimate_tokens(recorded.text)
    if max_tokens is None or tokens <= max_tokens:
        return recorded.text, logprobs, "stop"
    keep_chars = max(1, round(len(recorded.text) * max_tokens / tokens))
    return recorded.text[:keep_chars], logprobs[:max_tokens] if logprobs else None, "length"


class ReplayEngine(ConcurrentBatchMixin):
    """Looks the query up in JSONL records; a miss raises ``ReplayMissError`` so the cascade moves on."""

    def __init__(self, config: ReplayEngineConfig, name: str = "replay") -> None:
        self.name = name
        self.config = config
        self._by_task: dict[tuple[str | None, str], Recorded] = {}
        self._any_task: dict[str, Recorded] = {}
        files = sorted({f for pattern in config.records for f in glob.glob(pattern, recursive=True)})
        if not files:
            raise ConfigError(f"replay records {config.records!r} match no files")
        for file in files:
            self._load(Path(file))

    def _load(self, file: Path) -> None:
        cfg = self.config
        for _, row in iter_jsonl(file):
            if cfg.input_field not in row or cfg.answer_field not in row:
                continue
            key = normalise(str(row[cfg.input_field]))
            logprobs = row.get(cfg.logprobs_field) if cfg.logprobs_field else None
            answer = Recorded(answer_text(row[cfg.answer_field]), [float(x) for x in logprobs] if logprobs else None)
            task = row.get(cfg.task_field) if cfg.task_field else None
            self._by_task.setdefault((task, key), answer)
            self._any_task.setdefault(key, answer)

    def __len__(self) -> int:
        return len(self._any_task)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        key = normalise(lookup_text(request))
        # An answer recorded for another task is no answer to this one: the same sentence can be a
        # legal_risk input and a cs_intent query, with different labels. Records without a task
        # answer any task, and a request without a task takes any record.
        recorded = self._by_task.get((request.task, key)) or self._by_task.get((None, key))
        if recorded is None and request.task is None:
            recorded = self._any_task.get(key)
        if recorded is None:
            raise ReplayMissError(f"tier {self.name!r} has no recorded answer for this input")
        text, logprobs, finish_reason = truncate(recorded, request.max_tokens)
        return GenerationResult(
            text=text,
            token_logprobs=logprobs,
            prompt_tokens=estimate_tokens(request_text(request)),
            completion_tokens=len(logprobs) if logprobs else estimate_tokens(text),
            latency_ms=(time.perf_counter() - started) * 1000,
            finish_reason=finish_reason,
            model=self.name,
            usage_estimated=True,
        )

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The recorded answer in word pieces, as a hosted model would stream it."""
        result = await self.generate(request)
        async for item in stream_pieces(result, [p for p in _WORD_BOUNDARY.split(result.text) if p]):
            yield item

    def check_health(self) -> None:
        return None
