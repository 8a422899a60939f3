"""Pydantic config models, one concern per module, and the YAML loader."""

from routenlp_ray.config.app import RouteNLPConfig, expand_env, load_config, parse_config
from routenlp_ray.config.cascade import CascadeConfig
from routenlp_ray.config.server import ServerConfig
from routenlp_ray.config.storage import StorageConfig
from routenlp_ray.config.tiers import (
    AutoscalingConfig,
    EngineConfig,
    GenerationLimits,
    OpenAIEngineConfig,
    Pricing,
    ReplayEngineConfig,
    ReplicaResources,
    TierConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)

__all__ = [
    "AutoscalingConfig",
    "CascadeConfig",
    "EngineConfig",
    "GenerationLimits",
    "OpenAIEngineConfig",
    "Pricing",
    "ReplayEngineConfig",
    "ReplicaResources",
    "RouteNLPConfig",
    "ServerConfig",
    "StorageConfig",
    "TierConfig",
    "TransformersEngineConfig",
    "VLLMEngineConfig",
    "expand_env",
    "load_config",
    "parse_config",
]
