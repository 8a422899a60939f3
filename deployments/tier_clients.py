"""Adapters that let the router call tier deployments and the coverage monitor through their handles."""

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


class HandleMonitorClient:
    """The coverage monitor's ``DeploymentHandle`` as a ``serving.live.MonitorLink``.

    ``.remote()`` sends the call at once, so ``adopt`` takes effect even where it is not awaited.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def adopt(self, table: dict[str, Any]) -> Any:
        return self._handle.adopt.remote(table)

    def current(self, known_version: str | None) -> Any:
        return self._handle.current.remote(known_version)
