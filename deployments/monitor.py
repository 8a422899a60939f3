"""The coverage monitor deployment: one replica that owns live recalibration for the app."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from routenlp_ray.config.app import parse_config
from routenlp_ray.conformal.thresholds import load_thresholds
from routenlp_ray.monitoring.service import MonitorService
from routenlp_ray.telemetry.metrics import NullMonitorMetrics, RayMonitorMetrics
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.monitor")


class CoverageMonitorDeployment:
    """Wraps ``MonitorService``; a single replica so every router sees one threshold history."""

    def __init__(self, config: dict[str, Any], use_ray_metrics: bool = True) -> None:
        self.config = parse_config(config, source="monitor deployment args")
        self.query_log = QueryLog(self.config.storage, writer_label="monitor")
        metrics = RayMonitorMetrics() if use_ray_metrics else NullMonitorMetrics()
        self.service = MonitorService(
            self.config, load_thresholds(self.config.cascade), query_log=self.query_log, metrics=metrics
        )
        self._ticker: asyncio.Task[None] | None = None

    def _ensure_ticker(self) -> None:
        # The schedule trigger must fire even when no labels arrive.
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.monitoring.check_interval_s)
            try:
                await self.service.check()
            except Exception:
                logger.exception("coverage check failed")

    async def submit(self, payload: dict[str, Any]) -> int:
        self._ensure_ticker()
        return await self.service.submit(payload)

    async def current(self, known_version: str | None = None) -> dict[str, Any] | None:
        self._ensure_ticker()
        return self.service.current(known_version)

    async def audit_rates(self) -> dict[str, float]:
        self._ensure_ticker()
        return self.service.audit_rates()

    async def adopt(self, table: dict[str, Any]) -> str:
        return self.service.adopt(table)

    async def status(self) -> dict[str, Any]:
        self._ensure_ticker()
        return self.service.status()

    def check_health(self) -> None:
        if self.query_log.closed:
            raise RuntimeError("query log is closed")
