"""routenlp-ray: closed-loop LLM routing on Ray.

A portfolio of model tiers behind one OpenAI-compatible endpoint; each query goes to the
cheapest tier whose answer passes a split-conformal uncertainty threshold.
"""

from routenlp_ray._exceptions import (
    AllTiersFailedError,
    ArtifactError,
    AuthenticationError,
    ConfigError,
    DuplicateFeedbackError,
    EngineError,
    MissingExtraError,
    NotFittedError,
    PayloadTooLargeError,
    ReplayMissError,
    RequestError,
    RouteNLPError,
    StreamInterruptedError,
    TierTimeoutError,
    UnknownResponseError,
    UnknownTaskError,
)
from routenlp_ray.config import RouteNLPConfig, load_config, parse_config

__version__ = "0.1.0"

__all__ = [
    "AllTiersFailedError",
    "ArtifactError",
    "AuthenticationError",
    "ConfigError",
    "DuplicateFeedbackError",
    "EngineError",
    "MissingExtraError",
    "NotFittedError",
    "PayloadTooLargeError",
    "ReplayMissError",
    "RequestError",
    "RouteNLPConfig",
    "RouteNLPError",
    "StreamInterruptedError",
    "TierTimeoutError",
    "UnknownResponseError",
    "UnknownTaskError",
    "__version__",
    "load_config",
    "parse_config",
]
