"""Start-tier policies (the learned difficulty-aware router plugs in here)."""

from routenlp_ray.routing.policy import CheapestTierPolicy, StartTierPolicy, load_policy

__all__ = ["CheapestTierPolicy", "StartTierPolicy", "load_policy"]
