"""Build the in-process engine for a tier config."""

from __future__ import annotations

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.engines.base import Engine


def make_engine(tier: TierConfig) -> Engine:
    """The engine that runs inside a tier replica. vLLM tiers are Ray Serve LLM deployments instead."""
    engine = tier.engine
    if engine.type == "transformers":
        from routenlp_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine(engine, name=tier.name)
    if engine.type == "replay":
        from routenlp_ray.engines.replay import ReplayEngine

        return ReplayEngine(engine, name=tier.name)
    if engine.type == "specialist":
        from routenlp_ray.engines.specialist import SpecialistEngine

        return SpecialistEngine(engine, name=tier.name, tasks=tier.tasks)
    if engine.type == "openai":
        from routenlp_ray.engines.openai_http import OpenAICompatibleEngine

        return OpenAICompatibleEngine(engine, name=tier.name)
    raise ConfigError(
        f"tier {tier.name!r}: engine type {engine.type!r} is served by Ray Serve LLM, not by an in-process engine"
    )
