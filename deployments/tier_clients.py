"""Adapters that let the router call tier deployments and the coverage monitor through their handles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from routenlp_ray.engines.base import GenerationRequest, GenerationResult, StreamItem


class HandleTierClient:
    """Calls a ``TierDeployment`` through its ``DeploymentHandle``.

    A call whose replica died under it is sent once more. Serve's handle retries only requests
    that no replica has accepted yet; one a replica accepted and then died with fails with
    ``RayActorError``, and by then the handle has dropped that replica, so the second try goes
    to a live one (or waits for its replacement) instead of escalating to a dearer tier.
    """

    def __init__(self, handle: Any, replica_death_retries: int = 1) -> None:
        self._handle = handle
        self._retries = replica_death_retries

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        from ray.exceptions import RayActorError, RayTaskError

        for attempt in range(self._retries + 1):
            try:
                result = await self._handle.generate.remote(request)
            except RayActorError:
                if attempt == self._retries:
                    raise
                continue
            except RayTaskError as exc:
                raise _tier_error(exc) from None
            # Expected failures (a replay miss) come back as values, so the tier logs no traceback.
            if isinstance(result, BaseException):
                raise result
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The tier's ``generate_stream``, item by item as the replica yields them."""
        from ray.exceptions import RayTaskError

        try:
            async for item in self._handle.options(stream=True).generate_stream.remote(request):
                yield item
        except RayTaskError as exc:
            raise _tier_error(exc) from None


def _tier_error(exc: BaseException) -> BaseException:
    """The tier's own error (e.g. ReplayMissError), not Ray's wrapper and traceback."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


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

    def audit_rates(self) -> Any:
        return self._handle.audit_rates.remote()
