"""Cost accounting: what each attempt cost and what the frontier would have cost."""

from __future__ import annotations

from routenlp_ray.config.tiers import Pricing


def attempt_cost(pricing: Pricing, prompt_tokens: int, completion_tokens: int) -> float:
    return pricing.cost_usd(prompt_tokens, completion_tokens)


def frontier_cost(frontier: Pricing, prompt_tokens: int, completion_tokens: int) -> float:
    """What the query would have cost sent straight to the frontier.

    When the frontier was not called its token counts are unknown, so the answering tier's
    counts stand in for them (the same prompt, an answer of similar length).
    """
    return frontier.cost_usd(prompt_tokens, completion_tokens)
