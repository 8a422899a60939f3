"""Uncertainty scores u(m_k, x): higher means less certain.

A score reads an ``AnswerEvidence``: the answer with its per-token logprobs (and, where the
tier returns them, the top-k alternatives per token) and the query it answers. Logprob
scores return ``None`` when the tier gave no logprobs, so the answer cannot be checked; the
cascade then escalates unless the tier is the last one. The learned answer scorer
(``conformal/answer_scorer.py``) needs no logprobs and covers hosted APIs and replays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routenlp_ray.engines.base import GenerationResult


@dataclass(frozen=True)
class AnswerEvidence:
    """What an uncertainty score may look at for one answer."""

    text: str | None
    token_logprobs: Sequence[float] | None = None
    top_logprobs: Sequence[Sequence[float]] | None = None
    task: str | None = None
    query: str | None = None

    @classmethod
    def from_result(cls, result: GenerationResult, task: str | None = None, query: str | None = None) -> "AnswerEvidence":
        return cls(result.text, result.token_logprobs, result.top_logprobs, task, query)

    @classmethod
    def from_record(cls, row: Mapping[str, Any], query: str | None = None) -> "AnswerEvidence":
        """From a recorder row (``routenlp record``) or a query-log record."""
        text = row.get("text", row.get("answer"))
        return cls(text, row.get("token_logprobs"), row.get("top_logprobs"), row.get("task"), query or row.get("input"))


UncertaintyScore = Callable[[AnswerEvidence], "float | None"]


def mean_nll(evidence: AnswerEvidence) -> float | None:
    """Mean negative log-likelihood per generated token."""
    logprobs = evidence.token_logprobs
    if logprobs is None:
        return None
    return -sum(logprobs) / len(logprobs) if logprobs else math.inf


def max_nll(evidence: AnswerEvidence) -> float | None:
    """Negative log-likelihood of the least likely token."""
    logprobs = evidence.token_logprobs
    if logprobs is None:
        return None
    return -min(logprobs) if logprobs else math.inf


def one_minus_min_prob(evidence: AnswerEvidence) -> float | None:
    """1 - the smallest token probability, in [0, 1]."""
    logprobs = evidence.token_logprobs
    if logprobs is None:
        return None
    return 1.0 - math.exp(min(logprobs)) if logprobs else 1.0


def topk_entropy(evidence: AnswerEvidence) -> float | None:
    """Mean over tokens of the entropy of the top-k distribution, renormalised, divided by log k.

    In [0, 1]: 0 when one alternative holds all the top-k mass, 1 when the k are equally
    likely. Unlike the NLL scores it sees how close the runner-up tokens were.
    """
    top = evidence.top_logprobs
    if top is None:
        return None
    per_token = [_normalised_entropy(alternatives) for alternatives in top if len(alternatives) > 1]
    if not per_token:
        return 1.0 if not top else 0.0
    return sum(per_token) / len(per_token)


def _normalised_entropy(logprobs: Sequence[float]) -> float:
    peak = max(logprobs)
    weights = [math.exp(lp - peak) for lp in logprobs]
    total = sum(weights)
    entropy = -sum((w / total) * math.log(w / total) for w in weights if w > 0)
    return entropy / math.log(len(logprobs))


UNCERTAINTY_SCORES: dict[str, UncertaintyScore] = {
    "mean_nll": mean_nll,
    "max_nll": max_nll,
    "one_minus_min_prob": one_minus_min_prob,
    "topk_entropy": topk_entropy,
}


def get_uncertainty_score(name: str) -> UncertaintyScore:
    try:
        return UNCERTAINTY_SCORES[name]
    except KeyError:
        known = sorted([*UNCERTAINTY_SCORES, "learned"])
        raise ValueError(f"unknown uncertainty score {name!r}; known: {known}") from None
