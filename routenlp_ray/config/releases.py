"""Where the closed loop publishes releases, and how often replicas look for a new one."""

from __future__ import annotations

from pydantic import Field

from routenlp_ray.config._base import StrictModel


class ReleasesConfig(StrictModel):
    """A release holds LoRA adapters, thresholds and a router; ``CURRENT`` names the live one."""

    path: str | None = Field(
        None, description="Release store folder (shared storage on a cluster); None disables hot releases."
    )
    poll_interval_s: float = Field(5.0, gt=0, description="How often router and tier replicas check CURRENT.")
