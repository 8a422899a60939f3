"""Engines behind one protocol: transformers, vLLM via Ray Serve LLM, OpenAI-compatible HTTP, replay.

The package exports the protocol, its optional streaming part, and its request and result types. ``make_engine`` lives in
``routenlp_ray.engines.factory``: it knows every implementation (the specialist engine pulls
in ``specialists``), so importing the protocol does not import them.
"""

from routenlp_ray.engines.base import Engine, GenerationRequest, GenerationResult, StreamingEngine, StreamItem
from routenlp_ray.models.sources import resolve_model_source

__all__ = [
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "StreamItem",
    "StreamingEngine",
    "resolve_model_source",
]
