"""The router's request logic and its OpenAI-compatible request schemas."""

from routenlp_ray.serving.http import parse_body
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest, error_body
from routenlp_ray.serving.service import RouterService, RouterUserConfig

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "FeedbackRequest",
    "RouterService",
    "RouterUserConfig",
    "error_body",
    "parse_body",
]
