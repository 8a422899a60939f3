"""The router's request logic, its live artifacts and its OpenAI-compatible request schemas.

``RouterService`` is the request path; ``LiveArtifacts`` owns what changes without a restart
and hands each request one ``LiveSnapshot``; ``RequestGate`` holds auth and size limits.
"""

from routenlp_ray.serving.http import RequestGate, parse_body
from routenlp_ray.serving.live import LiveArtifacts, LiveSnapshot, MonitorLink, RouterUserConfig
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest, error_body
from routenlp_ray.serving.service import RouterService
from routenlp_ray.serving.streaming import StreamedResponse

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "FeedbackRequest",
    "LiveArtifacts",
    "LiveSnapshot",
    "MonitorLink",
    "RequestGate",
    "RouterService",
    "RouterUserConfig",
    "StreamedResponse",
    "error_body",
    "parse_body",
]
