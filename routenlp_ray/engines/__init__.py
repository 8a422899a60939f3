"""Engines behind one protocol: transformers, vLLM via Ray Serve LLM, OpenAI-compatible HTTP, replay."""

from routenlp_ray.engines.base import Engine, GenerationRequest, GenerationResult
from routenlp_ray.engines.factory import make_engine
from routenlp_ray.engines.sources import resolve_model_source

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "make_engine", "resolve_model_source"]
