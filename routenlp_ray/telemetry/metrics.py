"""Prometheus metrics of the router and the coverage monitor, exported through Ray's metrics agent.

``RayRouterMetrics`` must be created inside a Ray process (a Serve replica); library code
and unit tests use ``NullRouterMetrics``.

Telemetry knows no domain types: it reads what it records through the small protocols
below, which ``cascade.CascadeOutcome`` and ``monitoring.monitor.CellCoverage`` satisfy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
# Attempt statuses that send the query on to a more capable tier.
ESCALATION_STATUSES = ("escalated", "error", "timeout")


class AttemptRecord(Protocol):
    """What the metrics read of one tier attempt."""

    @property
    def tier(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def latency_ms(self) -> float: ...

    @property
    def cost_usd(self) -> float: ...


class OutcomeRecord(Protocol):
    """What the metrics read of one answered request."""

    @property
    def answered_by(self) -> str: ...

    @property
    def attempts(self) -> Sequence[AttemptRecord]: ...

    @property
    def fallback(self) -> bool: ...


class CellRecord(Protocol):
    """What the metrics read of one (tier, task) coverage estimate."""

    @property
    def tier(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def threshold(self) -> float | None: ...

    @property
    def correct(self) -> int: ...

    @property
    def coverage(self) -> float | None: ...

    @property
    def accepted_error_rate(self) -> float | None: ...

    @property
    def breach(self) -> Mapping[str, Any] | None: ...

    @property
    def short_of_evidence(self) -> bool: ...


class RouterMetrics(Protocol):
    def record_outcome(self, task: str, outcome: OutcomeRecord, latency_ms: float, saved_usd: float) -> None: ...

    def record_failure(self, task: str, reason: str) -> None: ...

    def record_rejection(self, reason: str) -> None: ...


class NullRouterMetrics:
    def record_outcome(self, task: str, outcome: OutcomeRecord, latency_ms: float, saved_usd: float) -> None:
        return None

    def record_failure(self, task: str, reason: str) -> None:
        return None

    def record_rejection(self, reason: str) -> None:
        return None


class RayRouterMetrics:
    """Counters and histograms named ``routenlp_*`` on Ray's Prometheus endpoint."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter(
            "routenlp_requests", description="Answered requests by task and answering tier.", tag_keys=("task", "tier")
        )
        self.tier_calls = Counter(
            "routenlp_tier_calls", description="Tier attempts by outcome.", tag_keys=("task", "tier", "status")
        )
        self.escalations = Counter(
            "routenlp_escalations", description="Escalations away from a tier.", tag_keys=("task", "tier", "reason")
        )
        self.cost = Counter("routenlp_cost_usd", description="USD spent per tier.", tag_keys=("task", "tier"))
        self.saved = Counter("routenlp_saved_usd", description="USD saved against frontier-only.", tag_keys=("task",))
        self.fallbacks = Counter(
            "routenlp_fallbacks",
            description="Answers returned although no tier accepted them (quality bar missed), by returning tier.",
            tag_keys=("task", "tier"),
        )
        self.fallback_cost = Counter(
            "routenlp_fallback_cost_usd",
            description="USD spent on requests answered by a fallback.",
            tag_keys=("task",),
        )
        self.failures = Counter("routenlp_failed_requests", description="Requests no tier answered.", tag_keys=("task", "reason"))
        self.rejections = Counter("routenlp_rejected_requests", description="Requests refused with a 4xx.", tag_keys=("reason",))
        self.latency = Histogram(
            "routenlp_request_latency_ms",
            description="End-to-end routing latency.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("task", "tier"),
        )
        self.tier_latency = Histogram(
            "routenlp_tier_latency_ms",
            description="Latency of each tier attempt.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("tier",),
        )

    def record_outcome(self, task: str, outcome: OutcomeRecord, latency_ms: float, saved_usd: float) -> None:
        self.requests.inc(1, tags={"task": task, "tier": outcome.answered_by})
        for attempt in outcome.attempts:
            self.tier_calls.inc(1, tags={"task": task, "tier": attempt.tier, "status": attempt.status})
            if attempt.status == "skipped":
                continue  # never called: no latency to observe
            self.tier_latency.observe(attempt.latency_ms, tags={"tier": attempt.tier})
            if attempt.cost_usd:
                self.cost.inc(attempt.cost_usd, tags={"task": task, "tier": attempt.tier})
            if attempt.status in ESCALATION_STATUSES:
                self.escalations.inc(1, tags={"task": task, "tier": attempt.tier, "reason": attempt.status})
        if outcome.fallback:
            self.fallbacks.inc(1, tags={"task": task, "tier": outcome.answered_by})
            spent = sum(a.cost_usd for a in outcome.attempts)
            if spent:
                self.fallback_cost.inc(spent, tags={"task": task})
        if saved_usd > 0:
            self.saved.inc(saved_usd, tags={"task": task})
        self.latency.observe(latency_ms, tags={"task": task, "tier": outcome.answered_by})

    def record_failure(self, task: str, reason: str) -> None:
        self.failures.inc(1, tags={"task": task, "reason": reason})

    def record_rejection(self, reason: str) -> None:
        self.rejections.inc(1, tags={"reason": reason})


class MonitorMetrics(Protocol):
    def record_cell(self, cell: CellRecord) -> None: ...

    def record_recalibration(self, reason: str) -> None: ...

    def record_threshold_action(self, tier: str, task: str, action: str) -> None: ...

    def record_audit_rate(self, task: str, rate: float) -> None: ...


class NullMonitorMetrics:
    def record_cell(self, cell: CellRecord) -> None:
        return None

    def record_recalibration(self, reason: str) -> None:
        return None

    def record_threshold_action(self, tier: str, task: str, action: str) -> None:
        return None

    def record_audit_rate(self, task: str, rate: float) -> None:
        return None


class RayMonitorMetrics:
    """Rolling coverage, accepted-error rate and thresholds per (tier, task), and recalibrations."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        cell = ("tier", "task")
        self.coverage = Gauge("routenlp_coverage", description="Rolling coverage of correct answers.", tag_keys=cell)
        self.labelled = Gauge(
            "routenlp_coverage_labelled", description="Correct audited answers in the estimate.", tag_keys=cell
        )
        self.accepted_error = Gauge(
            "routenlp_accepted_error_rate", description="Wrong share among audited accepted answers.", tag_keys=cell
        )
        self.threshold = Gauge("routenlp_threshold", description="Acceptance threshold in force.", tag_keys=cell)
        self.recalibrations = Counter(
            "routenlp_recalibrations", description="Threshold recalibrations by trigger.", tag_keys=("reason",)
        )
        self.breach_evidence = Gauge(
            "routenlp_breach_log10_e_value",
            description="Evidence that the cell breaks its promise (log10 e-value); it alarms at the alarm level.",
            tag_keys=cell,
        )
        self.breach_alarm = Gauge(
            "routenlp_breach_alarm_log10_e_value", description="The log10 e-value a breach must reach.", tag_keys=cell
        )
        self.short_of_evidence = Gauge(
            "routenlp_threshold_short_of_evidence",
            description="1 while the cell's threshold is kept or removed without certification (audits raised).",
            tag_keys=cell,
        )
        self.threshold_actions = Counter(
            "routenlp_threshold_actions",
            description="What refits did to each cell: certified, tightened, loosened, kept_uncertified, disabled...",
            tag_keys=("tier", "task", "action"),
        )
        self.audit_rate = Gauge("routenlp_audit_rate", description="Audit rate in force per task.", tag_keys=("task",))

    def record_cell(self, cell: CellRecord) -> None:
        tags = {"tier": cell.tier, "task": cell.task}
        self.labelled.set(cell.correct, tags=tags)
        if cell.coverage is not None:
            self.coverage.set(cell.coverage, tags=tags)
        if cell.accepted_error_rate is not None:
            self.accepted_error.set(cell.accepted_error_rate, tags=tags)
        if cell.threshold is not None:
            self.threshold.set(cell.threshold, tags=tags)
        if cell.breach is not None:
            self.breach_evidence.set(cell.breach["log10_e_value"], tags=tags)
            self.breach_alarm.set(cell.breach["alarm_log10_e_value"], tags=tags)
        self.short_of_evidence.set(1.0 if cell.short_of_evidence else 0.0, tags=tags)

    def record_recalibration(self, reason: str) -> None:
        # The tag is the trigger kind; the cell that triggered it is in the event log.
        self.recalibrations.inc(1, tags={"reason": reason.split(":", 1)[0]})

    def record_threshold_action(self, tier: str, task: str, action: str) -> None:
        self.threshold_actions.inc(1, tags={"tier": tier, "task": task, "action": action})

    def record_audit_rate(self, task: str, rate: float) -> None:
        self.audit_rate.set(rate, tags={"task": task})
