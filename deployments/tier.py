"""One model tier as a Ray Serve deployment (a plain class; the builder applies serve.deployment)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve

from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.engines.base import Engine, GenerationRequest, GenerationResult
from routenlp_ray.engines.factory import make_engine


class TierDeployment:
    """Wraps an engine. Concurrent ``generate`` calls are grouped by ``serve.batch`` into one engine batch."""

    def __init__(self, tier_config: dict[str, Any], engine_factory: Callable[[TierConfig], Engine] = make_engine) -> None:
        self.tier = TierConfig.model_validate(tier_config)
        self.engine = engine_factory(self.tier)
        limits = self.tier.limits
        self._batched_generate = serve.batch(
            max_batch_size=limits.max_batch_size, batch_wait_timeout_s=limits.batch_wait_timeout_s
        )(self._generate_batch)

    async def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
        try:
            return await self.engine.generate_batch(requests)
        except Exception as exc:
            if len(requests) == 1:
                raise
            # One bad request must not fail its batch-mates: retry them one by one.
            results: list[GenerationResult | BaseException] = []
            for request in requests:
                try:
                    results.append((await self.engine.generate_batch([request]))[0])
                except Exception as single_exc:
                    results.append(single_exc)
            del exc
            return results

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await self._batched_generate(request)
        if isinstance(result, BaseException):
            raise result
        return result

    def check_health(self) -> None:
        self.engine.check_health()
