"""The router ingress: FastAPI routes over ``RouterService`` (a plain class; the builder applies Serve)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from routenlp_ray._exceptions import AllTiersFailedError, RequestError
from routenlp_ray.config.app import parse_config
from routenlp_ray.serving.live import LiveArtifacts
from routenlp_ray.serving.metadata import HEADER_PREFIX, routing_headers
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest, error_body
from routenlp_ray.serving.service import RouterService
from routenlp_ray.serving.streaming import StreamedResponse
from routenlp_ray.telemetry.metrics import NullRouterMetrics, RayRouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog

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
            return await self._serve(
                "/v1/chat/completions", request, ChatCompletionRequest, self.service.chat, self.service.chat_stream
            )

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._serve(
                "/v1/completions", request, CompletionRequest, self.service.complete, self.service.complete_stream
            )

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

        # ``path``: model ids contain a slash (routenlp/<task>).
        @app.get("/v1/models/{model_id:path}")
        async def model(request: Request, model_id: str) -> Response:
            trace_id = _trace_id(request)
            try:
                self.service.gate.authenticate(request.headers.get("authorization"))
                return JSONResponse(self.service.model(model_id), headers=_trace_headers(trace_id))
            except RequestError as exc:
                return await self._reject(f"/v1/models/{model_id}", exc, trace_id)

        @app.get("/healthz")
        async def healthz() -> Response:
            self.live.ensure_following()
            return JSONResponse({**self.service.health(), "pid": os.getpid(), "started_at": self._started_at})

        return app

    # -- plumbing -------------------------------------------------------------------------
    async def _serve(
        self,
        endpoint: str,
        request: Request,
        schema: type[Body],
        handler: Callable[[Body, str | None], Awaitable[dict[str, Any]]],
        stream_handler: Callable[[Body, str | None], Awaitable[StreamedResponse]] | None = None,
    ) -> Response:
        server, gate = self.config.server, self.service.gate
        self.live.ensure_following()
        trace_id = _trace_id(request)
        try:
            gate.authenticate(request.headers.get("authorization"))
            gate.check_declared_length(request.headers.get("content-length"))
            body = gate.parse(await request.body(), schema)
            if stream_handler is not None and getattr(body, "stream", False):
                # The timeout bounds the wait for the first text; the cascade bounds each tier after that.
                streamed = await asyncio.wait_for(stream_handler(body, trace_id), timeout=server.request_timeout_s)
                return StreamingResponse(streamed.events, media_type="text/event-stream", headers=streamed.headers)
            result = await asyncio.wait_for(handler(body, trace_id), timeout=server.request_timeout_s)
        except RequestError as exc:
            return await self._reject(endpoint, exc, trace_id)
        except AllTiersFailedError as exc:
            return JSONResponse(error_body(str(exc), "service_unavailable", code="all_tiers_failed"), status_code=503)
        except asyncio.TimeoutError:
            message = f"no tier answered within the request timeout of {server.request_timeout_s}s"
            return JSONResponse(error_body(message, "timeout", code="request_timeout"), status_code=504)
        if "routing" in result:
            return JSONResponse(result, headers=routing_headers(result["id"], result["routing"]))
        return JSONResponse(result, headers=_trace_headers(trace_id))

    async def _reject(self, endpoint: str, exc: RequestError, trace_id: str | None = None) -> Response:
        try:
            await self.service.log_rejection(endpoint, exc, trace_id)
        except Exception:  # a logging failure must not turn a 4xx into a 500
            logger.exception("could not log a rejected request")
        return JSONResponse(
            error_body(exc.message, exc.error_type, param=exc.param, code=exc.error_type), status_code=exc.status_code
        )


def _trace_id(request: Request) -> str | None:
    """The client's ``x-request-id``, else the id Ray Serve gave the request (and echoes back)."""
    if request.headers.get("x-request-id"):
        return request.headers["x-request-id"][:200]  # a client's id, bounded before it reaches the log
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:  # outside a Serve replica (the app used without Ray)
        return None


def _trace_headers(trace_id: str | None) -> dict[str, str]:
    return {f"{HEADER_PREFIX}request-id": trace_id} if trace_id else {}


def _replica_label() -> str | None:
    """Name log segments after the Serve replica, so each replica writes its own files."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return None
