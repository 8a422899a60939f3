"""HTTP server settings of the router ingress."""

from __future__ import annotations

import os

from pydantic import Field

from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.tiers import AutoscalingConfig, ReplicaResources


class ServerConfig(StrictModel):
    """Authentication, request limits and timeouts."""

    api_keys: list[str] = Field(default_factory=list, description="Accepted bearer tokens; empty means no auth.")
    api_keys_env: str | None = Field(
        "ROUTENLP_API_KEYS", description="Environment variable with more comma-separated keys."
    )
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 above).")
    max_input_chars: int = Field(20_000, ge=1, description="Largest total message text accepted (413 above).")
    request_timeout_s: float = Field(180.0, gt=0, description="Whole-request budget across the cascade.")
    default_task: str | None = Field(None, description="Task used when `model` is 'routenlp' with no task.")
    # Two replicas by default: when one dies mid-request, Serve's proxy sends the client's retry to
    # the other at once instead of waiting seconds for a replacement to start.
    autoscaling: AutoscalingConfig = Field(
        default_factory=lambda: AutoscalingConfig(min_replicas=2, max_replicas=2),
        description="Autoscaling of the router ingress deployment (at least 2 replicas by default).",
    )
    resources: ReplicaResources = Field(
        default_factory=lambda: ReplicaResources(num_cpus=0.5), description="Resources per router replica."
    )
    max_ongoing_requests: int = Field(256, ge=1, description="Concurrent requests one router replica accepts.")
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="How long a router replica being stopped (downscale, redeploy) may finish its requests."
    )

    def resolved_api_keys(self) -> frozenset[str]:
        keys = set(self.api_keys)
        if self.api_keys_env and os.environ.get(self.api_keys_env):
            keys.update(k.strip() for k in os.environ[self.api_keys_env].split(",") if k.strip())
        return frozenset(keys)
