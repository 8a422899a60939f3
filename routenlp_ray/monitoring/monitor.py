"""Rolling coverage per (tier, task) from labelled answers, and when and how to recalibrate.

Pure logic, no Ray: the monitor deployment (``deployments/monitor.py``) feeds it labelled
answers and publishes what it decides.

Coverage is judged on fresh evidence only: an answer counts towards a (tier, task)'s
estimate if it was labelled after the thresholds now in force went live, and it is judged
against those thresholds. So after a recalibration the estimate starts over, and a
recovery is seen on traffic the new thresholds were not fitted to.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from routenlp_ray.cascade import accepts
from routenlp_ray.config.monitoring import MonitoringConfig
from routenlp_ray.conformal.calibrator import ConformalCalibrator, wilson_interval
from routenlp_ray.conformal.thresholds import ThresholdTable

LabelSource = Literal["audit", "feedback"]


@dataclass(frozen=True)
class LabelledAnswer:
    """One cheap-tier answer whose correctness is known."""

    tier: str
    task: str
    uncertainty: float | None
    correct: bool
    source: LabelSource = "audit"
    ts: float = 0.0
    query_id: str | None = None


@dataclass
class CellCoverage:
    """The rolling estimate of one (tier, task)."""

    tier: str
    task: str
    threshold: float | None
    correct: int
    covered: int
    coverage: float | None
    ci_low: float | None
    ci_high: float | None
    # Among audited answers the current thresholds accept, the share that were wrong.
    accepted: int
    accepted_error_rate: float | None
    # Among all audited answers, the share the current thresholds accept although wrong: the
    # quality the tier costs the task (what the quality rule bounds).
    audited: int = 0
    quality_loss: float | None = None


@dataclass
class Recalibration:
    """A new threshold version and what changed."""

    reason: str
    before: ThresholdTable
    after: ThresholdTable
    changes: list[dict[str, Any]]
    n_labelled: int

    def event(self) -> dict[str, Any]:
        return {
            "event": "recalibration",
            "reason": self.reason,
            "before": {"thresholds_version": self.before.version},
            "after": {"thresholds_version": self.after.version},
            "changes": self.changes,
            "n_labelled": self.n_labelled,
        }


class CoverageMonitor:
    """Keeps labelled answers, estimates coverage, and recalibrates when asked or when due."""

    def __init__(
        self,
        config: MonitoringConfig,
        alpha: float,
        thresholds: ThresholdTable,
        default_threshold: float | None = None,
        now: float | None = None,
        quality_budgets: Mapping[str, float] | None = None,
    ) -> None:
        self.config = config
        self.alpha = alpha
        # Under the quality rule each task's budget of wrong accepted answers (1 - quality_target).
        self.quality_budgets = dict(quality_budgets or {})
        self.default_threshold = default_threshold
        self.thresholds = thresholds
        self.live_since = time.time() if now is None else now
        self.last_recalibration = self.live_since
        self._recent: deque[LabelledAnswer] = deque(maxlen=config.recalibration_window)
        self._audits: deque[LabelledAnswer] = deque(maxlen=50 * config.window)
        self.n_observed = 0

    # -- evidence -------------------------------------------------------------------------
    def observe(self, answer: LabelledAnswer) -> None:
        self.n_observed += 1
        if answer.source == "audit":
            # Only audits are a random sample of a tier's answers; feedback sees accepted answers
            # alone, so it cannot reveal rejected correct ones and would overstate coverage.
            self._recent.append(answer)
            self._audits.append(answer)

    def threshold(self, tier: str, task: str) -> float | None:
        return self.thresholds.resolve(tier, task, self.default_threshold)

    def cells(self) -> list[tuple[str, str]]:
        return sorted({(a.tier, a.task) for a in self._audits})

    def coverage(self, tier: str, task: str) -> CellCoverage:
        delta = self.threshold(tier, task)
        fresh = [a for a in self._audits if a.tier == tier and a.task == task and a.ts >= self.live_since]
        correct = [a for a in fresh if a.correct][-self.config.window :]
        covered = sum(accepts(a.uncertainty, delta, is_last=False) for a in correct)
        accepted = [a for a in fresh if accepts(a.uncertainty, delta, is_last=False)][-self.config.window :]
        wrong = sum(not a.correct for a in accepted)
        audited = fresh[-self.config.window :]
        lost = sum(not a.correct and accepts(a.uncertainty, delta, is_last=False) for a in audited)
        low, high = wilson_interval(covered, len(correct)) if correct else (math.nan, math.nan)
        return CellCoverage(
            tier=tier,
            task=task,
            threshold=delta,
            correct=len(correct),
            covered=covered,
            coverage=covered / len(correct) if correct else None,
            ci_low=None if math.isnan(low) else low,
            ci_high=None if math.isnan(high) else high,
            accepted=len(accepted),
            accepted_error_rate=wrong / len(accepted) if accepted else None,
            audited=len(audited),
            quality_loss=lost / len(audited) if audited else None,
        )

    def report(self) -> list[dict[str, Any]]:
        return [asdict(self.coverage(tier, task)) for tier, task in self.cells()]

    # -- triggers -------------------------------------------------------------------------
    def due(self, now: float | None = None) -> str | None:
        """Why a recalibration is due now, else None.

        'coverage_drop:<tier>/<task>' under the coverage rule; under the risk rule, whose thresholds
        promise an accepted-error rate rather than coverage, 'risk_breach:<tier>/<task>' when that
        rate's Wilson interval lies wholly above epsilon; under the quality rule 'quality_breach:<tier>/<task>'
        when the share of audited queries the tier answered wrong and was accepted on lies wholly
        above the task's budget; 'schedule' for any.
        """
        now = time.time() if now is None else now
        floor = 1 - self.alpha - self.config.coverage_drop
        for tier, task in self.cells():
            cell = self.coverage(tier, task)
            if cell.threshold is None:
                continue
            if self.config.method == "quality":
                if cell.audited < self.config.min_labelled or cell.quality_loss is None:
                    continue
                low, _ = wilson_interval(round(cell.quality_loss * cell.audited), cell.audited)
                if low > self.quality_budgets.get(task, self.config.epsilon):
                    return f"quality_breach:{tier}/{task}"
                continue
            if self.config.method == "risk":
                if cell.accepted < self.config.min_labelled or cell.accepted_error_rate is None:
                    continue
                low, _ = wilson_interval(round(cell.accepted_error_rate * cell.accepted), cell.accepted)
                if low > self.config.epsilon:
                    return f"risk_breach:{tier}/{task}"
                continue
            if cell.correct < self.config.min_labelled:
                continue
            if cell.coverage is not None and cell.coverage < floor:
                return f"coverage_drop:{tier}/{task}"
        if now - self.last_recalibration >= self.config.schedule_hours * 3600 and self._recent:
            return "schedule"
        return None

    def recalibrate(self, reason: str, version: str, now: float | None = None) -> Recalibration:
        """Fit thresholds on the most recent labelled answers; (tier, task)s absent from them keep theirs."""
        now = time.time() if now is None else now
        recent = list(self._recent)
        calibrator = ConformalCalibrator(
            alpha=self.alpha, method=self.config.method, epsilon=self.config.epsilon, delta=self.config.delta,
            score=self.thresholds.score or "mean_nll",
            epsilon_per_task=self.quality_budgets or None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a tier left with no threshold shows up in the changes
            calibrator.conformalize(
                np.array([math.nan if a.uncertainty is None else a.uncertainty for a in recent], dtype=float),
                [a.correct for a in recent],
                [a.tier for a in recent],
                [a.task for a in recent],
            )
        fitted = calibrator.thresholds_
        merged = {tier: dict(per_task) for tier, per_task in self.thresholds.thresholds.items()}
        changes = []
        for tier, per_task in fitted.items():
            for task, after in per_task.items():
                before = self.threshold(tier, task)
                merged.setdefault(tier, {})[task] = after
                counts = calibrator.counts_[tier][task]
                changes.append({"tier": tier, "task": task, "before": before, "after": after, **counts})
        before_table = self.thresholds
        after_table = ThresholdTable(
            version=version, alpha=self.alpha, score=before_table.score, thresholds=merged
        )
        self.thresholds, self.live_since, self.last_recalibration = after_table, now, now
        return Recalibration(reason, before_table, after_table, changes, len(recent))

    def adopt(self, table: ThresholdTable, now: float | None = None) -> None:
        """Thresholds set from outside (a publish or rollback): coverage starts over under them."""
        self.thresholds = table
        self.live_since = time.time() if now is None else now
