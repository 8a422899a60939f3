"""Start-tier policies (the learned difficulty-aware router plugs in here), and how to fit them."""

from routenlp_ray.routing.data import RouterDataset, load_source
from routenlp_ray.routing.fit import FitSettings, UtilityRouter, fit_router
from routenlp_ray.routing.policy import CheapestTierPolicy, StartTierPolicy, load_policy

__all__ = [
    "CheapestTierPolicy",
    "FitSettings",
    "RouterDataset",
    "StartTierPolicy",
    "UtilityRouter",
    "fit_router",
    "load_policy",
    "load_source",
]
