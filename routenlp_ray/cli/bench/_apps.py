"""The Serve app builders of ``deployments/``, handed down to the serving benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routenlp_ray.bench.serving import ServingApps


def serving_apps() -> ServingApps:
    """The Serve app builders of ``deployments/`` for the serving benchmarks.

    The CLI is the top layer, and this is the only library module that reaches up into
    ``deployments``; it hands the builders down so that ``bench`` itself never imports them.
    """
    from deployments.builders import build_routenlp_app, build_tier
    from routenlp_ray.bench.serving import ServingApps

    return ServingApps(router=build_routenlp_app, tier=build_tier)
