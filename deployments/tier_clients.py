"""Adapters that let the cascade call tier deployments through their handles."""

from __future__ import annotations

from typing import Any

from routenlp_ray.engines.base import GenerationRequest, GenerationResult


class HandleTierClient:
    """Calls a ``TierDeployment`` through its ``DeploymentHandle``."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        from ray.exceptions import RayTaskError

        try:
            return await self._handle.generate.remote(request)
        except RayTaskError as exc:
            # Surface the tier's own error (e.g. ReplayMissError), not Ray's wrapper and traceback.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
