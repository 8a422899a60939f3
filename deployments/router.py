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
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.readiness import Readiness
from deployments.tier_clients import HandleMonitorClient, HandleTierClient
from routenlp_ray._exceptions import AllTiersFailedError, RequestError
from routenlp_ray.config.app import parse_config
from routenlp_ray.serving.live import LiveArtifacts
from routenlp_ray.serving.metadata import HEADER_PREFIX, routing_headers
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest, error_body
from routenlp_ray.serving.service import RouterService
from routenlp_ray.serving.streaming import StreamedResponse
from routenlp_ray.telemetry.metrics import NullRouterMetrics, RayRouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.ingress")
Body = TypeVar("Body", bound=BaseModel)
# Liveness answers without a key (a load balancer's probe carries none), and says only "ok" then.
OPEN_PATHS = frozenset({"/healthz"})

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
        async def healthz(request: Request) -> Response:
            self.live.ensure_following()
            if not self.service.gate.is_authorized(request.headers.get("authorization")):
                return JSONResponse({"status": "ok"})  # versions and pid are for key holders
            return JSONResponse({**self.service.health(), "pid": os.getpid(), "started_at": self._started_at})

        @app.get("/readyz")
        async def readyz(request: Request) -> Response:
            # Readiness names tiers and replica counts, so it sits behind the key like the API
            # (the gate middleware below checks it).
            report = await self.readiness.check()
            return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            return await self._http_error(request, exc)

        # Outermost but for Starlette's own error middleware: the key is checked for every route,
        # /docs and /openapi.json and routes added later included, and no exception leaves as plain text.
        app.add_middleware(_GateAndGuard, ingress=self)
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
            gate.check_declared_length(request.headers.get("content-length"))
            body = gate.parse(await gate.read(request.stream()), schema)
            if stream_handler is not None and getattr(body, "stream", False):
                # The timeout bounds the wait for the first text; the cascade bounds each tier after that.
                streamed = await asyncio.wait_for(stream_handler(body, trace_id), timeout=server.request_timeout_s)
                return StreamingResponse(streamed.events, media_type="text/event-stream", headers=streamed.headers)
            result = await asyncio.wait_for(handler(body, trace_id), timeout=server.request_timeout_s)
        except RequestError as exc:
            return await self._reject(endpoint, exc, trace_id)
        except AllTiersFailedError as exc:
            return await self._server_error(endpoint, 503, "all_tiers_failed", str(exc), public=str(exc))
        except asyncio.TimeoutError:
            message = f"no tier answered within the request timeout of {server.request_timeout_s}s"
            return await self._server_error(endpoint, 504, "request_timeout", message, public=message)
        if "routing" in result:
            return JSONResponse(result, headers=routing_headers(result["id"], result["routing"]))
        return JSONResponse(result, headers=_trace_headers(trace_id))

    async def _reject(self, endpoint: str, exc: RequestError, trace_id: str | None = None) -> Response:
        try:
            await self.service.events.rejection(endpoint, exc, trace_id)
        except Exception:  # a logging failure must not turn a 4xx into a 500
            logger.exception("could not log a rejected request")
        return JSONResponse(
            error_body(exc.message, exc.error_type, param=exc.param, code=exc.code), status_code=exc.status_code
        )

    async def _http_error(self, request: Request, exc: StarletteHTTPException) -> Response:
        """Routing errors (unknown path, wrong method) in the OpenAI error shape, naming method and path."""
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            error = RequestError(f"Invalid URL ({method} {path}): no such endpoint")
        elif exc.status_code == 405:
            allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
            accepts = allowed or "other methods"
            error = RequestError(f"Method not allowed ({method} {path}); this endpoint accepts {accepts}")
        else:
            error = RequestError(f"{exc.detail} ({method} {path})")
        error.status_code = exc.status_code
        response = await self._reject(path, error)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def _server_error(
        self, endpoint: str, status: int, code: str, detail: str, public: str | None = None
    ) -> Response:
        """A 5xx: logged to the events stream with its detail; the client gets ``public`` or the event id."""
        event_id = None
        try:
            event_id = await self.service.events.server_error(endpoint, status, code, detail)
        except Exception:  # a logging failure must not hide the original error
            logger.exception("could not log a server error")
        message = public or f"internal error while serving {endpoint}; it is logged as event {event_id}"
        return JSONResponse(error_body(message, "server_error", code=code), status_code=status)


class _GateAndGuard:
    """ASGI middleware: the API key for every path but liveness, and a logged JSON 500 for any escaped error."""

    def __init__(self, app: ASGIApp, ingress: RouterIngress) -> None:
        self.app = app
        self.ingress = ingress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        endpoint = f"{scope['method']} {path}"
        if path not in OPEN_PATHS:
            try:
                self.ingress.service.gate.authenticate(Headers(scope=scope).get("authorization"))
            except RequestError as exc:
                response = await self.ingress._reject(path, exc)
                await response(scope, receive, send)
                return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.exception("unhandled error on %s", endpoint)
            if started:
                raise  # the status line is out already; nothing better can be sent
            detail = f"{type(exc).__name__}: {exc}"
            response = await self.ingress._server_error(endpoint, 500, "internal_error", detail)
            await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path as the app's routes see it: without the Serve route prefix (``root_path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


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
