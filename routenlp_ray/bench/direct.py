"""A bare ingress that calls one tier directly: the baseline of the ingress-overhead benchmark.

It is benchmark-only, so it lives here rather than among the production deployments in
``deployments/``. ``DirectTierIngress`` is a plain class; ``build_direct_tier_app`` applies
the Serve decorators, as the builders in ``deployments/builders.py`` do for the router.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from routenlp_ray.engines.base import GenerationRequest

if TYPE_CHECKING:
    from ray.serve import Application


class DirectTierIngress:
    """Forwards a chat body straight to one tier handle: no task, cascade, log or metrics."""

    def __init__(self, tier_handle: Any) -> None:
        self._tier = tier_handle

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            generation = GenerationRequest(
                request_id=uuid.uuid4().hex,
                messages=body["messages"],
                max_tokens=body.get("max_tokens") or 16,
                task=body.get("task"),
            )
            result = await self._tier.generate.remote(generation)
            return JSONResponse({"choices": [{"message": {"role": "assistant", "content": result.text}}]})

        return app


def build_direct_tier_app(tier_app: "Application") -> "Application":
    """One tier application (built by ``deployments.builders.build_tier``) behind the bare ingress."""
    from ray import serve

    # The same logical CPUs as a router replica, so both paths schedule on a 2-core machine.
    ingress = serve.deployment(
        serve.ingress()(DirectTierIngress), name="direct", max_ongoing_requests=256,
        ray_actor_options={"num_cpus": 0.5},
    )
    return ingress.bind(tier_app)
