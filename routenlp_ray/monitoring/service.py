"""The coverage monitor's request logic, free of Ray so it can be tested directly.

Router replicas send it audits and feedback labels; it labels audits with the task
metrics, keeps the rolling coverage, recalibrates when due, writes every new threshold
version to ``monitoring.artifacts_dir`` and logs each change with its before and after
values. Routers poll ``current()`` and swap a new version in without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.conformal.thresholds import ThresholdTable
from routenlp_ray.monitoring.audits import Audit, AuditLabeller
from routenlp_ray.monitoring.monitor import CoverageMonitor, LabelledAnswer, Recalibration
from routenlp_ray.telemetry.metrics import MonitorMetrics, NullMonitorMetrics
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.monitor")


class MonitorService:
    def __init__(
        self,
        config: RouteNLPConfig,
        thresholds: ThresholdTable,
        query_log: QueryLog | None = None,
        metrics: MonitorMetrics | None = None,
    ) -> None:
        self.config = config
        self.settings = config.monitoring
        self.monitor = CoverageMonitor(
            self.settings, config.cascade.alpha, thresholds, default_threshold=config.cascade.default_threshold,
            quality_budgets={t.name: 1 - t.quality_target for t in config.tasks},
        )
        self.labeller = AuditLabeller(config)
        self.query_log = query_log
        self.metrics = metrics or NullMonitorMetrics()
        self.recalibrations = 0
        self._lock = asyncio.Lock()

    @property
    def thresholds(self) -> ThresholdTable:
        return self.monitor.thresholds

    # -- evidence -------------------------------------------------------------------------
    async def submit(self, payload: dict[str, Any]) -> int:
        """Take one audit or feedback label; returns how many labelled answers it gave."""
        kind = payload.get("kind")
        if kind == "audit":
            audit = Audit.from_dict({k: v for k, v in payload.items() if k != "kind"})
            # Metrics such as BERTScore run a model: keep them off the event loop.
            labelled = await asyncio.to_thread(self.labeller.label, audit)
        elif kind == "feedback":
            labelled = [
                LabelledAnswer(
                    tier=payload["tier"], task=payload["task"], uncertainty=payload.get("uncertainty"),
                    correct=bool(payload["correct"]), source="feedback", ts=payload.get("ts", time.time()),
                    query_id=payload.get("query_id"),
                )
            ]
        else:
            raise ValueError(f"unknown monitor payload kind {kind!r}; expected 'audit' or 'feedback'")
        for answer in labelled:
            self.monitor.observe(answer)
        if labelled:
            await self.check()
        return len(labelled)

    # -- decisions ------------------------------------------------------------------------
    async def check(self, now: float | None = None) -> Recalibration | None:
        """Recalibrate if a trigger fires; export the rolling estimates either way."""
        async with self._lock:
            reason = self.monitor.due(now)
            result = None
            if reason is not None:
                result = await self._recalibrate(reason, now)
            for cell in self.monitor.cells():
                self.metrics.record_cell(self.monitor.coverage(*cell))
            return result

    async def _recalibrate(self, reason: str, now: float | None) -> Recalibration:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        version = f"live-{stamp}-{uuid.uuid4().hex[:6]}"
        result = self.monitor.recalibrate(reason, version, now)
        path = Path(self.settings.artifacts_dir) / f"{version}.json"
        result.after.save(path)
        self.recalibrations += 1
        self.metrics.record_recalibration(reason)
        event = {**result.event(), "artifact": str(path)}
        logger.warning(
            "recalibrated thresholds (%s): %s -> %s; changes: %s",
            reason, result.before.version, result.after.version, result.changes,
        )
        if self.query_log is not None:
            await self.query_log.append("events", {"id": f"evt-{uuid.uuid4().hex}", "ts": _now(), **event})
        return result

    def adopt(self, table: dict[str, Any]) -> str:
        """Thresholds published from outside (a loop iteration, a rollback) become the monitor's."""
        adopted = ThresholdTable.model_validate(table)
        if adopted.version != self.monitor.thresholds.version:
            self.monitor.adopt(adopted)
        return adopted.version

    # -- what routers and operators read ----------------------------------------------------
    def current(self, known_version: str | None = None) -> dict[str, Any] | None:
        """The thresholds now in force, or None when the caller has them already."""
        table = self.monitor.thresholds
        return None if table.version == known_version else table.model_dump(mode="json")

    def status(self) -> dict[str, Any]:
        return {
            "thresholds_version": self.monitor.thresholds.version,
            "live_since": self.monitor.live_since,
            "recalibrations": self.recalibrations,
            "observed": self.monitor.n_observed,
            "cells": self.monitor.report(),
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
