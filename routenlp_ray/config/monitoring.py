"""Live coverage monitoring and automatic recalibration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.tiers import ReplicaResources


class MonitoringConfig(StrictModel):
    """Audits label a random sample of cheap-tier answers against the last tier's answer.

    A rolling coverage estimate per (tier, task) is kept from them. Thresholds are
    recalibrated on the most recent labelled answers on a schedule, or as soon as coverage
    falls ``coverage_drop`` below ``1 - alpha``; the router picks new thresholds up live.
    """

    enabled: bool = Field(False, description="Run the coverage monitor deployment and audit traffic.")
    audit_rate: float = Field(
        0.05, ge=0, le=1, description="Share of queries whose cheap-tier answers are labelled against the last tier."
    )
    window: int = Field(200, ge=10, description="Labelled correct answers per (tier, task) in the rolling estimate.")
    recalibration_window: int = Field(2000, ge=20, description="Most recent labelled answers recalibration uses.")
    schedule_hours: float = Field(48.0, gt=0, description="Recalibrate at least this often.")
    coverage_drop: float = Field(0.05, gt=0, lt=1, description="Recalibrate when coverage < 1 - alpha - this.")
    min_labelled: int = Field(
        30, ge=5, description="Correct labelled answers a (tier, task) needs before its coverage can trigger."
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
