"""HTTP server settings of the router ingress."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator

from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.tiers import AutoscalingConfig, ReplicaResources


class ServerConfig(StrictModel):
    """Authentication, request limits and timeouts."""

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Refused when set: keys inline in a config travel in Serve's application args, "
        "which Ray prints. Use `api_keys_env` or `api_keys_file`.",
    )
    api_keys_env: str | None = Field(
        "ROUTENLP_API_KEYS",
        description="Environment variable with comma-separated bearer tokens, read inside each router replica.",
    )
    api_keys_file: str | None = Field(
        None,
        description="File with one bearer token a line (`#` comments allowed), read inside each router replica; "
        "keys from it and from `api_keys_env` are all accepted. No keys from either means no auth.",
    )
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 above).")
    # The longest input of the shared data set (a fin_summarization filing) is 58,315 characters.
    max_input_chars: int = Field(100_000, ge=1, description="Largest total message text accepted (413 above).")
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

    @field_validator("api_keys", mode="before")
    @classmethod
    def _no_inline_keys(cls, value: Any) -> Any:
        # The value is never quoted: a refused key must not reach the error message either.
        if value:
            raise ValueError(
                "inline API keys are refused: Ray echoes application args in the `serve run` console, the "
                "controller log and `serve config`; put the keys in the ROUTENLP_API_KEYS environment variable "
                "(server.api_keys_env) or in a file named by server.api_keys_file"
            )
        return []
