from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from routenlp_ray import AllTiersFailedError, EngineError
from routenlp_ray.cascade import SKIP_NO_THRESHOLD, SKIP_UNSERVED, CascadeTier, accepts, accepts_array, run_cascade
from routenlp_ray.config import Pricing
from routenlp_ray.conformal import AnswerEvidence, mean_nll
from routenlp_ray.engines import GenerationRequest, GenerationResult

PRICE = Pricing(input_per_1m=1.0, output_per_1m=2.0)
REQUEST = GenerationRequest(request_id="r1", messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def answering(text: str, logprobs: list[float] | None, delay_s: float = 0.0):
    async def call(request: GenerationRequest) -> GenerationResult:
        await asyncio.sleep(delay_s)
        return GenerationResult(text=text, token_logprobs=logprobs, prompt_tokens=10, completion_tokens=5, latency_ms=1)

    return call


async def failing(request: GenerationRequest) -> GenerationResult:
    raise EngineError("boom")


def tiers(*calls, timeout_s: float = 1.0) -> list[CascadeTier]:
    return [CascadeTier(name=f"t{i}", call=c, pricing=PRICE, timeout_s=timeout_s) for i, c in enumerate(calls)]


def score(result: GenerationResult) -> float | None:
    return mean_nll(AnswerEvidence.from_result(result))


@pytest.mark.parametrize(
    ("uncertainty", "threshold", "is_last", "expected"),
    [
        (0.5, 1.0, False, True),
        (1.0, 1.0, False, True),  # at the threshold is accepted
        (1.5, 1.0, False, False),
        (None, 1.0, False, False),  # unscorable answers escalate
        (0.1, None, False, False),  # no threshold means the tier never accepts
        (None, None, True, True),  # the last tier always accepts
        (9.0, 1.0, True, True),
    ],
)
def test_acceptance_rule(uncertainty, threshold, is_last, expected) -> None:
    assert accepts(uncertainty, threshold, is_last) is expected


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_rule_agrees_with_accepts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 2, size=200)
    u[rng.random(200) < 0.2] = np.nan
    u[:3] = [np.inf, 0.0, np.nan]
    for threshold in [None, 0.0, float(rng.uniform(0, 2)), float(u[5]), np.inf]:
        got = accepts_array(u, threshold)
        assert got.dtype == bool and got.shape == u.shape
        # NaN is how arrays spell an unscorable answer, which ``accepts`` receives as None.
        expected = [bool(accepts(None if np.isnan(x) else float(x), threshold, is_last=False)) for x in u]
        assert got.tolist() == expected
        assert got.tolist() == [bool(accepts(float(x), threshold, is_last=False)) for x in u]


def test_vectorised_rule_keeps_the_shape() -> None:
    u = np.array([[0.1, np.nan], [2.0, 0.5]])
    assert accepts_array(u, 0.5).tolist() == [[True, False], [False, True]]
    assert accepts_array(u, None).tolist() == [[False, False], [False, False]]


async def test_confident_cheap_answer_is_accepted() -> None:
    outcome = await run_cascade(
        REQUEST, tiers(answering("cheap", [-0.1]), answering("big", [-0.1])), 0, lambda t: 0.5, score
    )
    assert outcome.answered_by == "t0"
    assert [a.status for a in outcome.attempts] == ["accepted"]
    assert outcome.cost_usd == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)


async def test_uncertain_answer_escalates_and_costs_add_up() -> None:
    outcome = await run_cascade(
        REQUEST, tiers(answering("cheap", [-2.0, -3.0]), answering("big", [-0.1])), 0, lambda t: 0.5, score
    )
    assert outcome.answered_by == "t1" and outcome.answer.text == "big"
    first = outcome.attempts[0]
    assert (first.status, first.uncertainty, first.threshold) == ("escalated", 2.5, 0.5)
    assert outcome.cost_usd == pytest.approx(2 * (10 * 1.0 + 5 * 2.0) / 1e6)
    assert outcome.escalations == 1


async def test_error_and_timeout_escalate() -> None:
    outcome = await run_cascade(
        REQUEST,
        tiers(failing, answering("slow", [-0.1], delay_s=1.0), answering("big", None), timeout_s=0.05),
        0,
        lambda t: 10.0,
        score,
    )
    assert [a.status for a in outcome.attempts] == ["error", "timeout", "accepted"]
    assert "EngineError: boom" in outcome.attempts[0].error
    assert outcome.answered_by == "t2"


async def test_failing_last_tier_falls_back_to_least_uncertain_answer() -> None:
    outcome = await run_cascade(
        REQUEST,
        tiers(answering("a", [-3.0]), answering("b", [-2.0]), failing),
        0,
        lambda t: 0.1,
        score,
    )
    assert outcome.fallback is True
    assert outcome.answered_by == "t1" and outcome.answer.text == "b"


async def test_all_tiers_failing_raises_with_every_reason() -> None:
    with pytest.raises(AllTiersFailedError, match="t0: EngineError: boom; t1: EngineError: boom"):
        await run_cascade(REQUEST, tiers(failing, failing), 0, lambda t: 1.0, score)


async def test_start_tier_skips_cheaper_tiers() -> None:
    outcome = await run_cascade(
        REQUEST, tiers(failing, answering("mid", [-0.1]), answering("big", None)), 1, lambda t: 1.0, score
    )
    assert [a.tier for a in outcome.attempts] == ["t1"]
    with pytest.raises(ValueError, match="outside"):
        await run_cascade(REQUEST, tiers(failing), 3, lambda t: 1.0, score)


async def test_empty_answer_is_maximally_uncertain() -> None:
    outcome = await run_cascade(REQUEST, tiers(answering("", []), answering("big", None)), 0, lambda t: 100.0, score)
    assert math.isinf(outcome.attempts[0].uncertainty)
    assert outcome.attempts[0].to_dict()["uncertainty"] is None
    assert outcome.answered_by == "t1"


async def test_failures_above_the_start_tier_fall_back_to_cheaper_tiers() -> None:
    outcome = await run_cascade(
        REQUEST, tiers(answering("cheap", [-5.0]), failing, failing), 1, lambda t: 0.1, score
    )
    assert outcome.fallback is True and outcome.answered_by == "t0"
    assert [(a.tier, a.status) for a in outcome.attempts] == [("t1", "error"), ("t2", "error"), ("t0", "fallback")]


def served(names, tasks_per_tier, *calls):
    return [
        CascadeTier(name=name, call=call, pricing=PRICE, timeout_s=1.0, tasks=tasks)
        for name, tasks, call in zip(names, tasks_per_tier, calls)
    ]


def counting(text: str, logprobs: list[float] | None, calls: list[str]):
    inner = answering(text, logprobs)

    async def call(request: GenerationRequest) -> GenerationResult:
        calls.append(text)
        return await inner(request)

    return call


TASK_REQUEST = GenerationRequest(request_id="r2", messages=[{"role": "user", "content": "hi"}], task="chat")


async def test_a_tier_that_does_not_serve_the_task_is_skipped_without_a_call_or_cost() -> None:
    called: list[str] = []
    cascade = served(
        ["spec", "small", "big"],
        [frozenset({"cs_intent"}), None, None],
        counting("spec", [-0.01], called),
        counting("small", [-0.1], called),
        counting("big", [-0.1], called),
    )
    outcome = await run_cascade(TASK_REQUEST, cascade, 0, lambda t: 0.5, score)
    assert called == ["small"] and outcome.answered_by == "small"
    skip = outcome.attempts[0]
    assert (skip.tier, skip.status, skip.cost_usd, skip.reason) == ("spec", "skipped", 0.0, SKIP_UNSERVED)
    assert outcome.escalations == 0 and outcome.skipped == ["spec"]
    assert skip.to_dict()["reason"] == SKIP_UNSERVED and skip.to_dict()["error"] is None


async def test_a_cheap_tier_without_a_threshold_is_skipped_but_answers_if_everything_above_fails() -> None:
    called: list[str] = []
    cascade = served(["small", "big"], [None, None], counting("small", [-0.1], called), counting("big", [-0.1], called))
    outcome = await run_cascade(TASK_REQUEST, cascade, 0, lambda t: None, score)
    assert called == ["big"] and outcome.answered_by == "big"
    assert [(a.tier, a.status, a.reason) for a in outcome.attempts][0] == ("small", "skipped", SKIP_NO_THRESHOLD)

    called.clear()
    cascade = served(["small", "big"], [None, None], counting("small", [-0.1], called), failing)
    outcome = await run_cascade(TASK_REQUEST, cascade, 0, lambda t: None, score)
    # The frontier failed: the skipped tier is the last resort, and the answer is marked a fallback.
    assert called == ["small"] and outcome.answered_by == "small" and outcome.fallback
    assert [a.status for a in outcome.attempts] == ["skipped", "error", "fallback"]


async def test_an_unserved_tier_is_never_a_last_resort() -> None:
    called: list[str] = []
    cascade = served(["spec", "big"], [frozenset({"cs_intent"}), None], counting("spec", [-0.1], called), failing)
    with pytest.raises(AllTiersFailedError):
        await run_cascade(TASK_REQUEST, cascade, 0, lambda t: 0.5, score)
    assert called == []
