"""Cost accounting: what a query would have cost sent straight to the frontier (the saving's baseline).

Each attempt's own cost is its tier's ``Pricing.cost_usd``, recorded by the cascade.
"""

from __future__ import annotations

from routenlp_ray.config.tiers import Pricing


def frontier_cost(frontier: Pricing, prompt_tokens: int, completion_tokens: int) -> float:
    """What the query would have cost sent straight to the frontier.

    When the frontier was not called its token counts are unknown, so the answering tier's
    counts stand in for them (the same prompt, an answer of similar length).
    """
    return frontier.cost_usd(prompt_tokens, completion_tokens)
