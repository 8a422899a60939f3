"""The conformal cascade as a pure async function over injected tier callables.

Nothing here knows about Ray: a tier is any ``async (GenerationRequest) -> GenerationResult``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np

from routenlp_ray._exceptions import (
    AllTiersFailedError,
    EngineError,
    RouteNLPError,
    StreamInterruptedError,
    TierTimeoutError,
)
from routenlp_ray.config.tiers import Pricing
from routenlp_ray.engines.base import GenerationRequest, GenerationResult, StreamItem

logger = logging.getLogger("routenlp.cascade")

TierCall = Callable[[GenerationRequest], Awaitable[GenerationResult]]
TierStream = Callable[[GenerationRequest], AsyncIterator[StreamItem]]
AttemptStatus = Literal["accepted", "escalated", "error", "timeout", "fallback", "skipped"]
# Why a tier was passed over without a call; a skip costs nothing and is not an escalation.
SKIP_UNSERVED = "does not serve this task"
SKIP_NO_THRESHOLD = "no threshold for this task: its answer could never be accepted"
# Why the configured fallback tier (``cascade.fallback_tier``) was asked.
FALLBACK_TIER = "cascade.fallback_tier: no tier that serves this task gave an answer"


@dataclass(frozen=True)
class CascadeTier:
    """One rung of the cascade as the cascade sees it."""

    name: str
    call: TierCall
    pricing: Pricing
    timeout_s: float
    # Tasks the tier answers; None = every task.
    tasks: frozenset[str] | None = None
    # The tier's streaming call, if it has one: used where its answer is accepted unconditionally.
    stream: TierStream | None = None

    def serves(self, task: str | None) -> bool:
        return self.tasks is None or task in self.tasks


@dataclass
class TierAttempt:
    """What happened at one tier; this is what the `routing` object and the query log show."""

    tier: str
    status: AttemptStatus
    uncertainty: float | None = None
    threshold: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None
    # Why a skipped tier was passed over (SKIP_UNSERVED or SKIP_NO_THRESHOLD).
    reason: str | None = None
    # True when the answer went to the client token by token, as the tier made it.
    streamed: bool = False
    # The tier's answer, kept for audits; the routing object and the log carry only the final one.
    text: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("text")
        # JSON has no infinity; an empty answer's unbounded uncertainty is logged as null.
        if isinstance(self.uncertainty, float) and math.isinf(self.uncertainty):
            data["uncertainty"] = None
        return data


@dataclass
class CascadeOutcome:
    answer: GenerationResult
    answered_by: str
    attempts: list[TierAttempt] = field(default_factory=list)
    # True when no tier accepted the answer returned: an earlier, unaccepted answer, a cheaper
    # tier asked as a last resort, or the configured fallback tier (``cascade.fallback_tier``).
    fallback: bool = False

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    @property
    def escalations(self) -> int:
        return sum(1 for a in self.attempts if a.status in ("escalated", "error", "timeout"))

    @property
    def skipped(self) -> list[str]:
        return [a.tier for a in self.attempts if a.status == "skipped"]


class TextSink(Protocol):
    """Where a streaming tier's text goes as it is made (the service's SSE stream)."""

    def begin(self, tier: str, attempts: Sequence[TierAttempt]) -> None:
        """The first piece is about to go out, from ``tier``, after ``attempts``: the answer is committed."""

    def write(self, text: str) -> None: ...


def accepts(uncertainty: float | None, threshold: float | None, is_last: bool) -> bool:
    """The cascade's acceptance rule: u <= delta, and the last tier always accepts."""
    if is_last:
        return True
    if uncertainty is None or threshold is None:
        return False
    return uncertainty <= threshold


def accepts_array(uncertainty: np.ndarray, threshold: float | None) -> np.ndarray:
    """``accepts`` for a non-final tier over an array of uncertainties: a boolean array of the same shape.

    NaN (an unscorable answer) is never accepted, and a ``None`` threshold accepts nothing.
    """
    u = np.asarray(uncertainty, dtype=float)
    if threshold is None:
        return np.zeros(u.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(u) & (u <= threshold)


async def run_cascade(
    request: GenerationRequest,
    tiers: Sequence[CascadeTier],
    start: int,
    threshold_for: Callable[[str], float | None],
    uncertainty_of: Callable[[GenerationResult], float | None],
    sink: TextSink | None = None,
    fallback: CascadeTier | None = None,
) -> CascadeOutcome:
    """Try tiers from ``start`` upward until one's answer is accepted.

    A tier that does not serve the request's task, or a cheap tier with no threshold for it
    (its answer could never be accepted), is skipped without a call. A tier that raises or
    times out escalates. If the last tier fails too, the least uncertain earlier answer is
    returned as a fallback; if no tier from ``start`` up answered, the tiers that were skipped
    for want of a threshold and the cheaper tiers below ``start`` are tried, most capable
    first. If that gives no answer either, ``fallback`` (``cascade.fallback_tier``) is asked,
    whether or not it serves the task, unless it was already called for this request; its
    answer is returned as a fallback. With no answer at all, ``AllTiersFailedError`` is raised.

    With a ``sink``, the last tier (whose answer is accepted unconditionally) streams its text
    into it as it is made, if the tier can stream; a cheaper tier's answer must be whole before
    it can be judged, so it never streams. Once text has gone out the answer is committed: a
    failure after that raises ``StreamInterruptedError`` instead of falling back.
    """
    if not 0 <= start < len(tiers):
        raise ValueError(f"start tier index {start} is outside 0..{len(tiers) - 1}")
    attempts: list[TierAttempt] = []
    unaccepted: list[tuple[float, int, GenerationResult, str]] = []
    last_resort = list(range(start))
    for index in range(start, len(tiers)):
        tier, is_last = tiers[index], index == len(tiers) - 1
        if not tier.serves(request.task):
            attempts.append(TierAttempt(tier.name, "skipped", reason=SKIP_UNSERVED))
            continue
        if not is_last and threshold_for(tier.name) is None:
            attempts.append(TierAttempt(tier.name, "skipped", reason=SKIP_NO_THRESHOLD))
            last_resort.append(index)
            continue
        live = sink if is_last and tier.stream is not None else None
        result = await _attempt(request, tier, attempts, threshold_for, uncertainty_of, is_last, live)
        if result is None:
            continue
        outcome_result, uncertainty = result
        if attempts[-1].status == "accepted":
            return CascadeOutcome(answer=outcome_result, answered_by=tiers[index].name, attempts=attempts)
        rank = uncertainty if uncertainty is not None else math.inf
        unaccepted.append((rank, -index, outcome_result, tiers[index].name))
    if unaccepted:
        # Least uncertain first; among equals, the more capable (later) tier.
        _, _, answer, name = min(unaccepted, key=lambda item: (item[0], item[1]))
        return CascadeOutcome(answer=answer, answered_by=name, attempts=attempts, fallback=True)
    # Nothing from the start tier upward answered: fall back to the cheaper tiers the start
    # policy skipped, most capable first, rather than drop the query.
    for index in sorted(last_resort, reverse=True):
        if not tiers[index].serves(request.task):
            continue
        result = await _attempt(request, tiers[index], attempts, threshold_for, uncertainty_of, is_last=True)
        if result is not None:
            attempts[-1].status = "fallback"
            return CascadeOutcome(answer=result[0], answered_by=tiers[index].name, attempts=attempts, fallback=True)
    # Every tier that serves the task failed, e.g. a replay frontier that has no record of a new
    # query: a new query is the normal case, so a configured general tier answers it instead.
    # A tier already called here failed on this very request and is not asked twice. Its answer
    # is whole before it goes out (never streamed live), so the headers can say it is a fallback.
    called = {a.tier for a in attempts if a.status != "skipped"}
    if fallback is not None and fallback.name not in called:
        result = await _attempt(request, fallback, attempts, threshold_for, uncertainty_of, is_last=True)
        if result is not None:
            attempts[-1].status, attempts[-1].reason = "fallback", FALLBACK_TIER
            return CascadeOutcome(answer=result[0], answered_by=fallback.name, attempts=attempts, fallback=True)
    details = "; ".join(f"{a.tier}: {a.error or f'skipped ({a.reason})'}" for a in attempts)
    raise AllTiersFailedError(f"every tier failed: {details}")


def public_error(exc: BaseException) -> str:
    """A tier's error as the client sees it (``routing.attempts``, a 503's message).

    Only our own errors keep their message (its first line, bounded): a foreign one, such as
    Ray's ``ActorDiedError``, can carry actor ids, pids, node addresses and namespaces, so the
    client gets its type and the router log the rest.
    """
    if isinstance(exc, RouteNLPError):
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
    return f"{type(exc).__name__} (details in the router log)"


async def _attempt(
    request: GenerationRequest,
    tier: CascadeTier,
    attempts: list[TierAttempt],
    threshold_for: Callable[[str], float | None],
    uncertainty_of: Callable[[GenerationResult], float | None],
    is_last: bool,
    sink: TextSink | None = None,
) -> tuple[GenerationResult, float | None] | None:
    """Call one tier and record the attempt; None when it failed or timed out."""
    started = time.perf_counter()
    progress = _StreamProgress()
    call = tier.call(request) if sink is None else _stream_into(request, tier, attempts, sink, progress)
    try:
        result = await asyncio.wait_for(call, timeout=tier.timeout_s)
    except Exception as exc:  # a broken tier must never drop the query
        timed_out = isinstance(exc, (asyncio.TimeoutError, TierTimeoutError))
        error = f"no answer within {tier.timeout_s}s" if timed_out else public_error(exc)
        if not timed_out and not isinstance(exc, RouteNLPError):
            logger.warning("tier %s failed on %s: %s: %s", tier.name, request.request_id, type(exc).__name__,
                           " ".join(str(exc).split())[:2000])
        if progress.sent:
            raise StreamInterruptedError(f"tier {tier.name!r} failed after its answer began streaming: {error}") from exc
        attempts.append(TierAttempt(tier.name, "timeout" if timed_out else "error", latency_ms=_ms_since(started),
                                    error=error))
        return None
    uncertainty = uncertainty_of(result)
    # A tier that accepts unconditionally (the last one, or a fallback) has no threshold to show.
    threshold = None if is_last else threshold_for(tier.name)
    attempts.append(
        TierAttempt(
            tier=tier.name,
            status="accepted" if accepts(uncertainty, threshold, is_last) else "escalated",
            uncertainty=uncertainty,
            threshold=threshold,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=tier.pricing.cost_usd(result.prompt_tokens, result.completion_tokens),
            latency_ms=_ms_since(started),
            streamed=progress.sent,
            text=result.text,
        )
    )
    return result, uncertainty


@dataclass
class _StreamProgress:
    sent: bool = False


async def _stream_into(
    request: GenerationRequest, tier: CascadeTier, attempts: list[TierAttempt], sink: TextSink, progress: _StreamProgress
) -> GenerationResult:
    """Pass the tier's text to ``sink`` as it comes; return the result it ends with."""
    assert tier.stream is not None  # only tiers that can stream get here
    result: GenerationResult | None = None
    async for item in tier.stream(request):
        if isinstance(item, GenerationResult):
            result = item
        elif item:
            if not progress.sent:
                sink.begin(tier.name, attempts)
                progress.sent = True
            sink.write(item)
    if result is None:
        raise EngineError(f"tier {tier.name!r} ended its stream without a result")
    return result


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
