"""Live coverage monitoring and automatic recalibration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.tiers import ReplicaResources


class MonitoringConfig(StrictModel):
    """Audits label a random sample of cheap-tier answers against the last tier's answer.

    Each (tier, task)'s promise (its rule's failure rate at or below its limit) is tested on
    the audits since its threshold went live, with an anytime-valid test at
    ``breach_confidence``. A breach, shown on at least ``min_labelled`` audits, refits that
    cell; the schedule refits every cell. A refit uses ``recalibration_window`` rows, the
    shipped ``calibration_rows`` filling what live audits do not. A threshold the refit cannot
    certify is kept (or removed only after a shown breach) and its task is audited at
    ``boosted_audit_rate`` until it is certified again. The router picks new thresholds and
    audit rates up live. See ``routenlp_ray/monitoring/monitor.py``.
    """

    enabled: bool = Field(False, description="Run the coverage monitor deployment and audit traffic.")
    audit_rate: float = Field(
        0.05, ge=0, le=1, description="Share of queries whose cheap-tier answers are labelled against the last tier."
    )
    window: int = Field(200, ge=10, description="Labelled correct answers per (tier, task) in the rolling estimate.")
    recalibration_window: int = Field(
        2000, ge=20,
        description="Labelled answers per (tier, task) a refit uses: its most recent audits, the shipped "
        "calibration_rows filling the rest (the paper's 2,000).",
    )
    schedule_hours: float = Field(48.0, gt=0, description="Recalibrate at least this often.")
    coverage_drop: float = Field(
        0.05, gt=0, lt=1, description="Coverage rule: a breach is coverage shown below 1 - alpha - this."
    )
    min_labelled: int = Field(
        100, ge=5,
        description="Audits a (tier, task) needs since its threshold went live before a breach can be declared "
        "(for the coverage rule, right answers; for risk, accepted ones); also the new audits between two refits "
        "of a cell short of evidence.",
    )
    breach_confidence: float = Field(
        0.99, gt=0.5, lt=1,
        description="Confidence at which a breach must be shown (anytime-valid mixture SPRT, split over the "
        "cells under test): the chance of ever firing while every promise holds is at most 1 - this.",
    )
    boosted_audit_rate: float = Field(
        0.3, ge=0, le=1,
        description="Audit rate of a task while one of its cells is short of evidence (a threshold kept without "
        "certification, or removed after a breach); never below audit_rate.",
    )
    calibration_rows: str | None = Field(
        None,
        description="JSONL of the labelled rows the shipped thresholds were fitted on (`routenlp calibrate "
        "--rows-out`); they fill a refit's window until live audits do.",
    )
    method: Literal["coverage", "risk", "quality"] = Field(
        "coverage", description="Calibration rule used to recalibrate (the quality rule's budgets are 1 - quality_target)."
    )
    epsilon: float = Field(0.1, gt=0, lt=1, description="Risk method: accepted-error bound.")
    delta: float = Field(0.1, gt=0, lt=1, description="Risk and quality methods: allowed failure probability.")
    check_interval_s: float = Field(10.0, gt=0, description="How often the monitor checks its triggers.")
    poll_interval_s: float = Field(2.0, gt=0, description="How often router replicas ask for new thresholds.")
    artifacts_dir: str = Field(
        "var/artifacts/thresholds/live", description="Where recalibrated threshold versions are written."
    )
    seed: int = Field(0, description="Seed of the audit sampler.")
    resources: ReplicaResources = Field(
        default_factory=lambda: ReplicaResources(num_cpus=0.1), description="Resources of the monitor replica."
    )
