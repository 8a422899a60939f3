"""The coverage monitor's request logic, free of Ray so it can be tested directly.

Router replicas send it audits and feedback labels; it labels audits with the task
metrics, writes each labelled answer to the query log (stream ``labels``), tests every
(tier, task)'s promise, recalibrates when due, writes every new threshold version to
``monitoring.artifacts_dir`` and logs each refit with the evidence behind it. Routers poll
``current()`` and ``audit_rates()`` and swap new versions in without a restart.

Events it logs (stream ``events``): ``recalibration`` (every refit, with each cell's action,
rows and breach test), ``threshold_kept`` (a threshold the refit could not certify, kept),
``threshold_disabled`` (removed after a shown breach) and ``audit_boost`` (a task's audit
rate raised or restored). The first three are what an SRE is paged on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from routenlp_ray.cascade import accepts
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.conformal.rows import load_calibration_rows
from routenlp_ray.conformal.thresholds import ThresholdTable
from routenlp_ray.monitoring.audits import Audit, AuditLabeller
from routenlp_ray.monitoring.monitor import CoverageMonitor, LabelledAnswer, Recalibration
from routenlp_ray.telemetry.metrics import MonitorMetrics, NullMonitorMetrics
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.monitor")

# The event each short-of-evidence action raises, besides the recalibration event itself.
ALERT_EVENTS = {"kept_uncertified": "threshold_kept", "disabled": "threshold_disabled", "still_none": "threshold_kept"}


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
        rows_path = self.settings.calibration_rows
        self.monitor = CoverageMonitor(
            self.settings, config.cascade.alpha, thresholds, default_threshold=config.cascade.default_threshold,
            quality_budgets={t.name: 1 - t.quality_target for t in config.tasks},
            calibration_rows=load_calibration_rows(rows_path) if rows_path else (),
        )
        self.labeller = AuditLabeller(config)
        self.query_log = query_log
        self.metrics = metrics or NullMonitorMetrics()
        self.recalibrations = 0
        self._audit_rates: dict[str, float] = {}
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
        await self._log_labels(labelled)
        if labelled:
            await self.check()
        return len(labelled)

    async def _log_labels(self, labelled: list[LabelledAnswer]) -> None:
        """Every labelled answer, with what the thresholds in force made of it: the audit trail."""
        if self.query_log is None:
            return
        table = self.monitor.thresholds
        for answer in labelled:
            threshold = self.monitor.threshold(answer.tier, answer.task)
            await self.query_log.append("labels", {
                "id": f"lbl-{uuid.uuid4().hex}", "ts": _now(), "t": answer.ts, "query_id": answer.query_id,
                "tier": answer.tier, "task": answer.task, "uncertainty": answer.uncertainty,
                "correct": answer.correct, "accepted": accepts(answer.uncertainty, threshold, is_last=False),
                "threshold": threshold, "thresholds_version": table.version, "source": answer.source,
            })

    # -- decisions ------------------------------------------------------------------------
    async def check(self, now: float | None = None) -> Recalibration | None:
        """Recalibrate if a trigger fires; export the per-cell evidence either way."""
        async with self._lock:
            reason = self.monitor.due(now)
            result = None
            if reason is not None:
                result = await self._recalibrate(reason, now)
            for cell in self.monitor.cells():
                self.metrics.record_cell(self.monitor.coverage(*cell))
            await self._update_audit_rates()
            return result

    async def _recalibrate(self, reason: str, now: float | None) -> Recalibration:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        version = f"live-{stamp}-{uuid.uuid4().hex[:6]}"
        result = self.monitor.recalibrate(reason, version, now)
        event = result.event()
        if result.published:
            path = Path(self.settings.artifacts_dir) / f"{version}.json"
            result.after.save(path)
            self.recalibrations += 1
            self.metrics.record_recalibration(reason)
            event["artifact"] = str(path)
        for change in result.changes:
            self.metrics.record_threshold_action(change["tier"], change["task"], change["action"])
        logger.warning(
            "recalibration (%s): %s -> %s; changes: %s",
            reason, result.before.version, result.after.version, result.changes,
        )
        await self._log_event(event)
        for change in result.changes:
            alert = ALERT_EVENTS.get(change["action"])
            if alert is not None:
                logger.warning("%s: %s/%s %s", alert, change["tier"], change["task"], change)
                await self._log_event({"event": alert, "reason": reason, "thresholds_version": result.after.version,
                                       **change})
        return result

    async def _update_audit_rates(self) -> None:
        rates = self.monitor.audit_rates()
        if rates == self._audit_rates:
            return
        for task in sorted(set(rates) | set(self._audit_rates)):
            rate = rates.get(task, self.settings.audit_rate)
            cells = [f"{tier}/{t}" for tier, t in self.monitor.short_of_evidence() if t == task]
            self.metrics.record_audit_rate(task, rate)
            if rate != self._audit_rates.get(task, self.settings.audit_rate):
                await self._log_event({"event": "audit_boost", "task": task, "audit_rate": rate,
                                       "raised": task in rates, "short_of_evidence": cells})
        self._audit_rates = rates

    async def _log_event(self, record: dict[str, Any]) -> None:
        if self.query_log is not None:
            await self.query_log.append("events", {"id": f"evt-{uuid.uuid4().hex}", "ts": _now(), **record})

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

    def audit_rates(self) -> dict[str, float]:
        """Raised audit rates by task; tasks not named use ``monitoring.audit_rate``."""
        return dict(self._audit_rates)

    def status(self) -> dict[str, Any]:
        return {
            "thresholds_version": self.monitor.thresholds.version,
            "live_since": self.monitor.live_since,
            "recalibrations": self.recalibrations,
            "observed": self.monitor.n_observed,
            "audit_rates": self.audit_rates(),
            "short_of_evidence": [f"{tier}/{task}" for tier, task in self.monitor.short_of_evidence()],
            "cells": self.monitor.report(),
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
