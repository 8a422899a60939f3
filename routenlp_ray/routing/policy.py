"""Start-tier policies: which tier the cascade tries first.

A policy is pluggable: ``cascade.start_policy`` is ``"cheapest"``, ``"router"`` (the learned
difficulty-aware router at ``cascade.router_path``) or ``"<module>:<factory>"``, a callable that
takes the artifact path and returns a policy.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from routenlp_ray._exceptions import ArtifactError, ConfigError


@runtime_checkable
class StartTierPolicy(Protocol):
    """Picks the first tier to try for a query. Tiers are ordered cheapest first."""

    version: str

    def start_tier(self, task: str, text: str, tiers: list[str]) -> str: ...


class CheapestTierPolicy:
    """Always start at the cheapest tier; the cascade escalates from there."""

    version = "cheapest"

    def start_tier(self, task: str, text: str, tiers: list[str]) -> str:
        return tiers[0]


BUILTIN_POLICIES = {"router": "routenlp_ray.routing.learned_policy:load_router_policy"}


def load_policy(spec: str, artifact_path: str | None = None) -> StartTierPolicy:
    """Build the policy named by ``spec``: "cheapest", "router" (the learned router), or "module:factory"."""
    if spec == "cheapest":
        return CheapestTierPolicy()
    spec = BUILTIN_POLICIES.get(spec, spec)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"start_policy {spec!r} must be 'cheapest', 'router' or '<module>:<factory>'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"start_policy {spec!r} cannot be imported: {exc}") from None
    policy = factory(artifact_path)
    if not isinstance(policy, StartTierPolicy):
        raise ArtifactError(f"start_policy {spec!r} returned {type(policy).__name__}, which has no start_tier/version")
    return policy
