"""Requests that got no answer, on the ``events`` stream: refused ones (4xx) and server errors (5xx)."""

from __future__ import annotations

import uuid

from routenlp_ray._exceptions import RequestError
from routenlp_ray.serving.responses import now_iso
from routenlp_ray.telemetry.metrics import RouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog


class RequestEvents:
    """Logs and counts what the router refused or failed at: a spike of 4xx is something operators look for."""

    def __init__(self, query_log: QueryLog | None, metrics: RouterMetrics) -> None:
        self._query_log = query_log
        self._metrics = metrics

    async def rejection(self, endpoint: str, error: RequestError, trace_id: str | None = None) -> None:
        self._metrics.record_rejection(error.code or error.error_type)
        record = {
            "id": f"rej-{uuid.uuid4().hex}", "ts": now_iso(), "kind": "rejected", "endpoint": endpoint,
            "trace_id": trace_id,
            "http_status": error.status_code, "error_type": error.error_type, "code": error.code,
            "param": error.param, "error": error.message,
        }
        if self._query_log is not None:
            await self._query_log.append("events", record)

    async def server_error(self, endpoint: str, status: int, code: str, detail: str) -> str:
        """A 5xx is logged with its detail, which the client does not see; returns the event id to quote."""
        self._metrics.record_failure("-", code)
        event_id = f"err-{uuid.uuid4().hex}"
        record = {
            "id": event_id, "ts": now_iso(), "kind": "server_error", "endpoint": endpoint,
            "http_status": status, "code": code, "error": detail,
        }
        if self._query_log is not None:
            await self._query_log.append("events", record)
        return event_id
