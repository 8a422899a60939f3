"""Routing metadata where every client can reach it: ``x-routenlp-*`` headers and ``system_fingerprint``.

LangChain, LiteLLM and the OpenAI SDK all drop unknown body fields somewhere (streams above
all), but each passes response headers through: LangChain with ``include_response_headers``,
LiteLLM in ``_hidden_params["additional_headers"]``, openai with ``with_raw_response``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from routenlp_ray.cascade import TierAttempt

HEADER_PREFIX = "x-routenlp-"


def system_fingerprint(thresholds_version: str, policy_version: str) -> str:
    """Which thresholds and start policy decided the answer, in OpenAI's reproducibility field."""
    return f"routenlp:thresholds={thresholds_version};policy={policy_version}"


def routing_headers(response_id: str, routing: Mapping[str, Any]) -> dict[str, str]:
    """The whole decision of a finished cascade: tier, escalations, cost, saving, versions, trace id."""
    values = {
        "response-id": response_id,
        "request-id": routing.get("trace_id"),
        "task": routing["task"],
        "start-tier": routing["start_tier"],
        "answered-by": routing["answered_by"],
        "escalations": routing["escalations"],
        "fallback": str(bool(routing["fallback"])).lower(),
        "cost-usd": _usd(routing["cost_usd"]),
        "frontier-cost-usd": _usd(routing["frontier_cost_usd"]),
        "saved-usd": _usd(routing["saved_usd"]),
        "thresholds-version": routing["thresholds_version"],
        "policy-version": routing["policy_version"],
        "streaming": "buffered",
    }
    return _headers(values)


def live_stream_headers(
    response_id: str,
    trace_id: str | None,
    task: str,
    start_tier: str,
    tier: str,
    attempts: Sequence[TierAttempt],
    versions: tuple[str, str],
) -> dict[str, str]:
    """What is decided when a tier's answer starts streaming live: the answering tier, not yet its cost.

    The cost, saving and usage follow in the stream's last chunks (the ``routing`` object).
    """
    escalations = sum(1 for a in attempts if a.status in ("escalated", "error", "timeout"))
    values = {
        "response-id": response_id,
        "request-id": trace_id,
        "task": task,
        "start-tier": start_tier,
        "answered-by": tier,
        "escalations": escalations,
        "thresholds-version": versions[0],
        "policy-version": versions[1],
        "streaming": "live",
    }
    return _headers(values)


def _usd(value: float) -> str:
    return f"{float(value):.10f}"


def _headers(values: Mapping[str, Any]) -> dict[str, str]:
    # Header values must be latin-1 and single-line; versions and ids are, but be safe.
    return {
        HEADER_PREFIX + name: str(value).replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
        for name, value in values.items()
        if value is not None
    }
