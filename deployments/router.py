"""The router ingress: FastAPI routes over ``RouterService`` (a plain class; the builder applies Serve)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from routenlp_ray._exceptions import AllTiersFailedError, RequestError
from routenlp_ray.config.app import parse_config
from routenlp_ray.serving.live import LiveArtifacts
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest, error_body
from routenlp_ray.serving.service import RouterService
from routenlp_ray.telemetry.metrics import NullRouterMetrics, RayRouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog

from deployments.readiness import Readiness
from deployments.tier_clients import HandleMonitorClient, HandleTierClient

logger = logging.getLogger("routenlp.ingress")
Body = TypeVar("Body", bound=BaseModel)

class RouterIngress:
    """Holds one handle per tier and answers the OpenAI-compatible API."""

    def __init__(
        self,
        config: dict[str, Any],
        tier_handles: dict[str, Any],
        llm_handles: dict[str, Any] | None = None,
        use_ray_metrics: bool = True,
        monitor_handle: Any | None = None,
    ) -> None:
        self.config = parse_config(config, source="router deployment args")
        tiers: dict[str, Any] = {name: HandleTierClient(handle) for name, handle in tier_handles.items()}
        if llm_handles:
            from routenlp_ray.engines.serve_llm import ServeLLMTierClient

            for name, handle in llm_handles.items():
                tiers[name] = ServeLLMTierClient(handle, self.config.tier(name))
        self.query_log = QueryLog(self.config.storage, writer_label=_replica_label())
        metrics = RayRouterMetrics() if use_ray_metrics else NullRouterMetrics()
        monitor = HandleMonitorClient(monitor_handle) if monitor_handle is not None else None
        sink = monitor_handle.submit.remote if monitor_handle is not None else None
        # Thresholds, policy, scores and release: swapped by reconfigure, the release store and the monitor.
        self.live = LiveArtifacts(self.config, query_log=self.query_log, monitor=monitor)
        self.service = RouterService(
            self.config, tiers, query_log=self.query_log, metrics=metrics, monitor_sink=sink, live=self.live
        )
        self._started_at = time.time()
        self.readiness = Readiness(tier_handles, llm_handles)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.live.reconfigure(user_config)

    def check_health(self) -> None:
        if self.query_log.closed:
            raise RuntimeError("query log is closed")

    def __del__(self) -> None:
        log = getattr(self, "query_log", None)
        if log is not None:
            log.close()

    # -- routes ---------------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by ``serve.ingress()`` on the replica, after ``__init__``."""
        return self.build_asgi_app()

    def build_asgi_app(self) -> FastAPI:
        """The FastAPI app, with routes closed over this instance (also usable without Ray)."""
        app = FastAPI(title="RouteNLP router", description="OpenAI-compatible endpoint over a conformal model cascade.")

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self._serve("/v1/chat/completions", request, ChatCompletionRequest, self.service.chat)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._serve("/v1/completions", request, CompletionRequest, self.service.complete)

        @app.post("/v1/feedback")
        async def feedback(request: Request) -> Response:
            return await self._serve("/v1/feedback", request, FeedbackRequest, self.service.feedback)

        @app.get("/v1/models")
        async def models(request: Request) -> Response:
            try:
                self.service.gate.authenticate(request.headers.get("authorization"))
            except RequestError as exc:
                return await self._reject("/v1/models", exc)
            return JSONResponse(self.service.models())

        @app.get("/healthz")
        async def healthz() -> Response:
            self.live.ensure_following()
            return JSONResponse({**self.service.health(), "pid": os.getpid(), "started_at": self._started_at})

        @app.get("/readyz")
        async def readyz(request: Request) -> Response:
            # Readiness names tiers and replica counts: behind the same key as the API.
            try:
                self.service.gate.authenticate(request.headers.get("authorization"))
            except RequestError as exc:
                return await self._reject("/readyz", exc)
            report = await self.readiness.check()
            return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

        return app

    # -- plumbing -------------------------------------------------------------------------
    async def _serve(
        self,
        endpoint: str,
        request: Request,
        schema: type[Body],
        handler: Callable[[Body], Awaitable[dict[str, Any]]],
    ) -> Response:
        server, gate = self.config.server, self.service.gate
        self.live.ensure_following()
        try:
            gate.authenticate(request.headers.get("authorization"))
            gate.check_declared_length(request.headers.get("content-length"))
            body = gate.parse(await request.body(), schema)
            result = await asyncio.wait_for(handler(body), timeout=server.request_timeout_s)
        except RequestError as exc:
            return await self._reject(endpoint, exc)
        except AllTiersFailedError as exc:
            return JSONResponse(error_body(str(exc), "service_unavailable", code="all_tiers_failed"), status_code=503)
        except asyncio.TimeoutError:
            message = f"no tier answered within the request timeout of {server.request_timeout_s}s"
            return JSONResponse(error_body(message, "timeout", code="request_timeout"), status_code=504)
        if getattr(body, "stream", False):
            return StreamingResponse(_as_sse(result), media_type="text/event-stream")
        return JSONResponse(result)

    async def _reject(self, endpoint: str, exc: RequestError) -> Response:
        try:
            await self.service.log_rejection(endpoint, exc)
        except Exception:  # a logging failure must not turn a 4xx into a 500
            logger.exception("could not log a rejected request")
        return JSONResponse(
            error_body(exc.message, exc.error_type, param=exc.param, code=exc.error_type), status_code=exc.status_code
        )


async def _as_sse(result: dict[str, Any]) -> AsyncIterator[str]:
    """Stream a finished answer: the cascade must see a whole answer before it can accept it."""
    is_chat = result["object"] == "chat.completion"
    chunk_object = "chat.completion.chunk" if is_chat else "text_completion"
    choice = result["choices"][0]
    base = {"id": result["id"], "object": chunk_object, "created": result["created"], "model": result["model"]}
    if is_chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": choice["message"]["content"]}, "finish_reason": None}
        last = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
    else:
        first = {"index": 0, "text": choice["text"], "finish_reason": None}
        last = {"index": 0, "text": "", "finish_reason": choice["finish_reason"]}
    yield f"data: {json.dumps({**base, 'choices': [first]})}\n\n"
    yield f"data: {json.dumps({**base, 'choices': [last], 'usage': result['usage'], 'routing': result['routing']})}\n\n"
    yield "data: [DONE]\n\n"


def _replica_label() -> str | None:
    """Name log segments after the Serve replica, so each replica writes its own files."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return None
