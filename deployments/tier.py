"""One model tier as a Ray Serve deployment (a plain class; the builder applies serve.deployment)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from routenlp_ray._exceptions import RouteNLPError
from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.engines.base import Engine, GenerationRequest, GenerationResult, StreamItem, stream_generation
from routenlp_ray.engines.factory import make_engine
from routenlp_ray.releases import Release, ReleaseWatcher

logger = logging.getLogger("routenlp.tier")


class TierDeployment:
    """Wraps an engine. Concurrent ``generate`` calls are grouped by ``serve.batch`` into one engine batch."""

    def __init__(
        self,
        tier_config: dict[str, Any],
        engine_factory: Callable[[TierConfig], Engine] = make_engine,
        releases: dict[str, Any] | None = None,
    ) -> None:
        self.tier = TierConfig.model_validate(tier_config)
        self.engine = engine_factory(self.tier)
        self._engine_factory = engine_factory
        self.release_version: str | None = None
        # The last release this tier could not load, and why: shown by release_status.
        self.refused_release: dict[str, str] | None = None
        self._swapping = threading.Lock()
        # Transformers tiers take a LoRA adapter and specialist tiers a new artifact in process;
        # vLLM tiers load theirs themselves.
        self._artifact_field = self.tier.release_artifact_field()
        self._configured_artifact = getattr(self.tier.engine, self._artifact_field or "", None)
        self._watcher = (
            ReleaseWatcher(releases["path"], releases["poll_interval_s"])
            if releases and releases.get("path") and self._artifact_field is not None
            else None
        )
        limits = self.tier.limits
        self._batched_generate = serve.batch(
            max_batch_size=limits.max_batch_size, batch_wait_timeout_s=limits.batch_wait_timeout_s
        )(self._generate_batch)
        # Serve routes to a replica only once __init__ returns, so a warmed engine is what "running" means.
        self.warm_up_s = self._warm_up()

    def _warm_up(self) -> float | None:
        """One token through a transformers engine, so the first client does not pay for lazy kernels."""
        warm = getattr(self.engine, "generate_batch_sync", None)
        if warm is None:
            return None
        started = time.perf_counter()
        warm([GenerationRequest(request_id="warm-up", prompt="Hello", max_tokens=1)])
        return time.perf_counter() - started

    def ready(self) -> dict[str, Any]:
        """Answered only by a replica whose engine is loaded and warmed: the router's /readyz asks it."""
        return {"tier": self.tier.name, "warmed": True, "warm_up_s": self.warm_up_s, "pid": os.getpid(),
                "release": self.release_version}

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

    # -- releases ---------------------------------------------------------------------------
    def _follow_releases(self) -> None:
        """Start loading a newly published adapter; the old engine serves until it is ready."""
        if self._watcher is None or self._swapping.locked():
            return
        release = self._watcher.poll()
        if release is not None:
            threading.Thread(target=self._swap_to, args=(release,), daemon=True).start()

    def _swap_to(self, release: Release) -> None:
        with self._swapping:
            field = self._artifact_field
            assert field is not None and self._watcher is not None  # only watched tiers swap
            released = release.adapter_for(self.tier.name)
            # A release without an artifact for this tier means the configured one (a base model, or
            # the specialist artifact the config names).
            wanted = str(released) if released else self._configured_artifact
            if wanted == getattr(self.engine.config, field, None):
                # Same weights as now (e.g. a release that only changes thresholds): nothing to load.
                self.release_version = release.version
                self._watcher.mark_applied(release.version)
                return
            engine_config = self.tier.engine.model_copy(update={field: wanted})
            try:
                update: dict[str, Any] = {"engine": engine_config}
                if released and self.tier.engine.type == "specialist":
                    # A released specialist serves every head it has: the loop may have given a task its
                    # first one (the router learns the same list from the release).
                    from routenlp_ray.specialists.artifact import read_manifest

                    update["tasks"] = sorted(read_manifest(released).tasks)
                engine = self._engine_factory(self.tier.model_copy(update=update))
            except Exception as exc:
                logger.exception("tier %s: could not load release %s; keeping %s", self.tier.name, release.version,
                                 self.release_version)
                self.refused_release = {"version": release.version, "error": f"{type(exc).__name__}: {exc}"}
                self._watcher.mark_applied(release.version)  # do not retry a broken release in a loop
                return
            self.engine, self.release_version = engine, release.version
            self._watcher.mark_applied(release.version)
            logger.info("tier %s now serves release %s (%s %s)", self.tier.name, release.version, field, wanted)

    def release_status(self) -> dict[str, Any]:
        self._follow_releases()
        artifact = getattr(getattr(self.engine, "config", None), self._artifact_field or "", None)
        status = {"tier": self.tier.name, "release": self.release_version, "artifact": artifact,
                  "refused": self.refused_release}
        if self._artifact_field == "adapter_path":
            status["adapter_path"] = artifact
        return status

    async def generate(self, request: GenerationRequest) -> GenerationResult | RouteNLPError:
        """The answer, or an expected failure (a replay miss, an engine error) returned as a value.

        A raised exception makes Serve log a full traceback per request; an expected event is
        one access-log line, and ``HandleTierClient`` raises it again on the router side.
        """
        self._follow_releases()
        try:
            result = await self._batched_generate(request)
        except RouteNLPError as exc:
            return exc
        if isinstance(result, RouteNLPError):
            return result
        if isinstance(result, BaseException):
            raise result
        return result

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Text pieces as the engine makes them, then the result; call with ``handle.options(stream=True)``.

        Not batched: a stream is one request's tokens, and only the cascade's final tier streams.
        """
        self._follow_releases()
        async for item in stream_generation(self.engine, request):
            yield item

    def check_health(self) -> None:
        self._follow_releases()  # Serve calls this every few seconds, so an idle tier follows releases too
        self.engine.check_health()
