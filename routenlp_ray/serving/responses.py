"""What one routed request leaves behind: its ``routing`` object, OpenAI response body and query-log record."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from routenlp_ray.cascade import CascadeOutcome
from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.costs import frontier_cost
from routenlp_ray.engines.base import GenerationRequest
from routenlp_ray.tasks.spec import TaskSpec

MODEL_PREFIX = "routenlp"


def routing_object(
    task: TaskSpec,
    start_tier: str,
    outcome: CascadeOutcome,
    frontier: TierConfig,
    thresholds_version: str,
    policy_version: str,
) -> dict[str, Any]:
    """The cascade's decision as the response's ``routing`` object shows it, with cost against frontier-only."""
    frontier_attempt = next(
        (a for a in outcome.attempts if a.tier == frontier.name and a.status in ("accepted", "escalated")), None
    )
    if frontier_attempt is not None:
        baseline = frontier_attempt.cost_usd
    else:
        baseline = frontier_cost(frontier.pricing, outcome.answer.prompt_tokens, outcome.answer.completion_tokens)
    total = outcome.cost_usd
    return {
        "task": task.name,
        "start_tier": start_tier,
        "answered_by": outcome.answered_by,
        "fallback": outcome.fallback,
        # A fallback is an answer no tier accepted: it missed the task's quality bar, so what it
        # cost bought no saving against the frontier answer it stands in for.
        "met_quality_bar": not outcome.fallback,
        "escalations": outcome.escalations,
        "attempts": [a.to_dict() for a in outcome.attempts],
        "cost_usd": total,
        "frontier_cost_usd": baseline,
        "saved_usd": 0.0 if outcome.fallback else baseline - total,
        "thresholds_version": thresholds_version,
        "policy_version": policy_version,
    }


def envelope(
    response_id: str,
    obj: str,
    task: TaskSpec,
    choice: dict[str, Any],
    outcome: CascadeOutcome,
    routing: dict[str, Any],
) -> dict[str, Any]:
    """The OpenAI response body, with the cascade's ``routing`` object attached."""
    answer = outcome.answer
    return {
        "id": response_id,
        "object": obj,
        "created": int(time.time()),
        "model": f"{MODEL_PREFIX}/{task.name}",
        "choices": [choice],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
        "routing": routing,
    }


def query_record(
    request: GenerationRequest,
    task: TaskSpec,
    endpoint: str,
    raw_input: str,
    start_tier: str,
    outcome: CascadeOutcome | None,
    routing: dict[str, Any] | None,
    latency_ms: float,
    thresholds_version: str,
    policy_version: str,
    error: str | None = None,
) -> dict[str, Any]:
    """One line of the ``queries`` stream; ``outcome`` is None when no tier answered."""
    answer = outcome.answer if outcome else None
    return {
        "id": request.request_id,
        "ts": now_iso(),
        "endpoint": endpoint,
        "task": task.name,
        "status": "ok" if outcome else "failed",
        "input": raw_input,
        "request": {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": list(request.stop),
        },
        "start_tier": start_tier,
        "answered_by": outcome.answered_by if outcome else None,
        "fallback": outcome.fallback if outcome else False,
        "attempts": routing["attempts"] if routing else [],
        "answer": answer.text if answer else None,
        "token_logprobs": answer.token_logprobs if answer else None,
        "prompt_tokens": answer.prompt_tokens if answer else 0,
        "completion_tokens": answer.completion_tokens if answer else 0,
        "cost_usd": float(routing["cost_usd"]) if routing else 0.0,
        "frontier_cost_usd": float(routing["frontier_cost_usd"]) if routing else 0.0,
        "saved_usd": float(routing["saved_usd"]) if routing else 0.0,
        "latency_ms": latency_ms,
        "thresholds_version": thresholds_version,
        "policy_version": policy_version,
        "error": error,
    }


def feedback_label(accepted: bool | None, score: float | None) -> bool | None:
    """Feedback as a label: ``accepted`` if given, else a score of at least 0.5 out of 1."""
    if accepted is not None:
        return accepted
    return None if score is None else score >= 0.5


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()
