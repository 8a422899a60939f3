"""Uncertainty scores u(m_k, x) computed from a tier's per-token logprobs.

Higher means less certain. A score is ``None`` when the tier returned no logprobs, so the
answer cannot be checked; the cascade then escalates unless the tier is the last one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

UncertaintyScore = Callable[[Sequence[float] | None], float | None]


def mean_nll(logprobs: Sequence[float] | None) -> float | None:
    """Mean negative log-likelihood per generated token."""
    if logprobs is None:
        return None
    return -sum(logprobs) / len(logprobs) if logprobs else math.inf


def max_nll(logprobs: Sequence[float] | None) -> float | None:
    """Negative log-likelihood of the least likely token."""
    if logprobs is None:
        return None
    return -min(logprobs) if logprobs else math.inf


def one_minus_min_prob(logprobs: Sequence[float] | None) -> float | None:
    """1 - the smallest token probability, in [0, 1]."""
    if logprobs is None:
        return None
    return 1.0 - math.exp(min(logprobs)) if logprobs else 1.0


UNCERTAINTY_SCORES: dict[str, UncertaintyScore] = {
    "mean_nll": mean_nll,
    "max_nll": max_nll,
    "one_minus_min_prob": one_minus_min_prob,
}


def get_uncertainty_score(name: str) -> UncertaintyScore:
    try:
        return UNCERTAINTY_SCORES[name]
    except KeyError:
        raise ValueError(f"unknown uncertainty score {name!r}; known: {sorted(UNCERTAINTY_SCORES)}") from None
