"""Live evidence per (tier, task) from labelled answers, and when and how to recalibrate.

Pure logic, no Ray: the monitor deployment (``deployments/monitor.py``) feeds it labelled
answers and publishes what it decides. Three rules keep the savings from being switched off
on thin evidence:

1. **A breach needs evidence.** Each cell's promise (its rule's failure rate at or below a
   limit) is tested with an anytime-valid test (``monitoring.evidence``) on every audit since
   the cell's threshold went live, at ``breach_confidence`` split over the cells, and only once
   ``min_labelled`` audits are in. Re-testing every few seconds does not inflate false alarms.
2. **A recalibration uses a full window.** A cell is refitted on its most recent
   ``recalibration_window`` audits; short of that, the shipped calibration rows
   (``calibration_rows``) fill the window. A cell whose breach was shown no longer trusts the
   shipped rows (they describe a tier that has changed): it is refitted on the audits since its
   threshold went live.
3. **A certified threshold is never silently removed.** When the rule cannot certify a
   threshold on the window, the last certified one is kept (or, after a quality or risk breach,
   tightened to what the evidence certifies). A threshold goes to none only when the breach
   test showed the tier worse than the target. Either way the cell is marked short of evidence:
   its task's audit rate is raised to ``boosted_audit_rate`` and the cell is refitted again each
   time ``min_labelled`` more audits arrive, until a threshold is certified.

A breach refits the breached cell only: a breach on legal_risk says nothing about cs_intent.
The schedule refits every cell with audits.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from routenlp_ray.cascade import accepts
from routenlp_ray.config.monitoring import MonitoringConfig
from routenlp_ray.conformal.calibrator import ConformalCalibrator, wilson_interval
from routenlp_ray.conformal.rows import CalibrationRow
from routenlp_ray.conformal.thresholds import ThresholdTable
from routenlp_ray.monitoring.evidence import BreachTest

LabelSource = Literal["audit", "feedback", "calibration"]
Cell = tuple[str, str]
# The trigger each rule's breach is reported as (``<kind>:<tier>/<task>``).
BREACH_KINDS = {"coverage": "coverage_drop", "risk": "risk_breach", "quality": "quality_breach"}
EVIDENCE_KIND = "evidence"
# What a refit did to a cell; the last three leave it short of evidence (audits raised).
Action = Literal["certified", "unchanged", "tightened", "loosened", "kept_uncertified", "disabled", "still_none"]
SHORT_OF_EVIDENCE = ("kept_uncertified", "disabled", "still_none")


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
    # The quality it gives up against the reference, in [0, 1], where the metric is graded; None: 1 when wrong.
    loss: float | None = None


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
    # The breach test on every audit since the threshold went live (None without a threshold).
    breach: dict[str, Any] | None = None
    # True while the cell's threshold is not certified by a full window (audits raised).
    short_of_evidence: bool = False


@dataclass
class Recalibration:
    """A refit of some cells: what each became, and the evidence behind it."""

    reason: str
    before: ThresholdTable
    after: ThresholdTable
    changes: list[dict[str, Any]]
    n_labelled: int

    @property
    def published(self) -> bool:
        """False when every refitted cell kept its value: no new version goes out."""
        return self.after.version != self.before.version

    def event(self) -> dict[str, Any]:
        return {
            "event": "recalibration",
            "reason": self.reason,
            "published": self.published,
            "before": {"thresholds_version": self.before.version},
            "after": {"thresholds_version": self.after.version},
            "changes": self.changes,
            "n_labelled": self.n_labelled,
        }


@dataclass
class _CellState:
    since: float
    # The shipped rows no longer describe the tier once a breach was shown on it.
    trusts_shipped: bool = True
    # Fresh audits the last refit that could not certify saw; None when certified.
    short_at: int | None = None
    # The cell's most recent audits (a deque bounded by recalibration_window).
    recent: deque[LabelledAnswer] = field(default_factory=deque)


class CoverageMonitor:
    """Keeps labelled answers, tests each cell's promise, and recalibrates when asked or when due."""

    def __init__(
        self,
        config: MonitoringConfig,
        alpha: float,
        thresholds: ThresholdTable,
        default_threshold: float | None = None,
        now: float | None = None,
        quality_budgets: Mapping[str, float] | None = None,
        calibration_rows: Sequence[CalibrationRow] = (),
    ) -> None:
        self.config = config
        self.alpha = alpha
        # Under the quality rule each task's budget of wrong accepted answers (1 - quality_target).
        self.quality_budgets = dict(quality_budgets or {})
        self.default_threshold = default_threshold
        self.thresholds = thresholds
        self.live_since = time.time() if now is None else now
        self.last_recalibration = self.live_since
        self._audits: deque[LabelledAnswer] = deque(maxlen=max(50 * config.window, 5 * config.recalibration_window))
        self._cells: dict[Cell, _CellState] = {}
        self._shipped = _shipped_by_cell(calibration_rows, config.seed)
        self.n_observed = 0

    # -- evidence -------------------------------------------------------------------------
    def observe(self, answer: LabelledAnswer) -> None:
        self.n_observed += 1
        if answer.source == "audit":
            # Only audits are a random sample of a tier's answers; feedback sees accepted answers
            # alone, so it cannot reveal rejected correct ones and would overstate coverage.
            self._audits.append(answer)
            self._state((answer.tier, answer.task)).recent.append(answer)

    def threshold(self, tier: str, task: str) -> float | None:
        return self.thresholds.resolve(tier, task, self.default_threshold)

    def cells(self) -> list[Cell]:
        return sorted({(a.tier, a.task) for a in self._audits})

    def fresh(self, tier: str, task: str) -> list[LabelledAnswer]:
        """Audits of the cell labelled since its threshold went live."""
        since = self._state((tier, task)).since
        return [a for a in self._state((tier, task)).recent if a.ts >= since]

    def short_of_evidence(self) -> list[Cell]:
        """Cells whose last refit could not certify a threshold: their tasks are audited more."""
        return sorted(cell for cell, state in self._cells.items() if state.short_at is not None)

    def audit_rates(self) -> dict[str, float]:
        """Raised audit rates by task, for the tasks with a cell short of evidence."""
        rate = max(self.config.boosted_audit_rate, self.config.audit_rate)
        return {task: rate for _, task in self.short_of_evidence()}

    def breach_test(
        self, tier: str, task: str, level: float | None = None, fresh: list[LabelledAnswer] | None = None
    ) -> BreachTest | None:
        """The test of the cell's promise on its fresh audits (pass them if in hand); None without a threshold."""
        delta = self.threshold(tier, task)
        if delta is None:
            return None
        fresh = self.fresh(tier, task) if fresh is None else fresh
        accepted = [accepts(a.uncertainty, delta, is_last=False) for a in fresh]
        level = 1 - self.config.breach_confidence if level is None else level
        method, min_n = self.config.method, self.config.min_labelled
        if method == "quality":
            failures = sum(ok and not a.correct for a, ok in zip(fresh, accepted))
            budget = self.quality_budgets.get(task, self.config.epsilon)
            return BreachTest("accepted-and-wrong share", budget, len(fresh), failures, level, min_n)
        if method == "risk":
            wrong = [not a.correct for a, ok in zip(fresh, accepted) if ok]
            return BreachTest("wrong share of accepted", self.config.epsilon, len(wrong), sum(wrong), level, min_n)
        missed = [not ok for a, ok in zip(fresh, accepted) if a.correct]
        limit = min(self.alpha + self.config.coverage_drop, 0.999)
        return BreachTest("rejected share of right answers", limit, len(missed), sum(missed), level, min_n)

    def coverage(self, tier: str, task: str) -> CellCoverage:
        delta = self.threshold(tier, task)
        fresh = self.fresh(tier, task)
        correct = [a for a in fresh if a.correct][-self.config.window :]
        covered = sum(accepts(a.uncertainty, delta, is_last=False) for a in correct)
        accepted = [a for a in fresh if accepts(a.uncertainty, delta, is_last=False)][-self.config.window :]
        wrong = sum(not a.correct for a in accepted)
        audited = fresh[-self.config.window :]
        lost = sum(not a.correct and accepts(a.uncertainty, delta, is_last=False) for a in audited)
        low, high = wilson_interval(covered, len(correct)) if correct else (math.nan, math.nan)
        test = self.breach_test(tier, task, self._level(), fresh)
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
            breach=None if test is None else test.evidence(),
            short_of_evidence=self._state((tier, task)).short_at is not None,
        )

    def report(self) -> list[dict[str, Any]]:
        return [asdict(self.coverage(tier, task)) for tier, task in self.cells()]

    # -- triggers -------------------------------------------------------------------------
    def due(self, now: float | None = None) -> str | None:
        """Why a recalibration is due now, else None.

        '<breach kind>:<tier>/<task>' when the cell's breach test fires ('coverage_drop',
        'risk_breach' or 'quality_breach' by rule); 'evidence:<tier>/<task>' when a cell short
        of evidence has ``min_labelled`` more audits than at its last refit; 'schedule' every
        ``schedule_hours``.
        """
        now = time.time() if now is None else now
        level = self._level()
        for tier, task in self.cells():
            test = self.breach_test(tier, task, level)
            if test is not None and test.breached:
                return f"{BREACH_KINDS[self.config.method]}:{tier}/{task}"
        for tier, task in self.short_of_evidence():
            short_at = self._state((tier, task)).short_at or 0
            if len(self.fresh(tier, task)) - short_at >= self.config.min_labelled:
                return f"{EVIDENCE_KIND}:{tier}/{task}"
        if now - self.last_recalibration >= self.config.schedule_hours * 3600 and self._audits:
            return "schedule"
        return None

    def recalibrate(self, reason: str, version: str, now: float | None = None) -> Recalibration:
        """Refit the cells ``reason`` names (every cell with audits for 'schedule'); see the module doc."""
        now = time.time() if now is None else now
        kind, _, named = reason.partition(":")
        breached = kind == BREACH_KINDS[self.config.method]
        cells = [tuple(named.split("/", 1))] if named else self.cells()
        merged = {tier: dict(per_task) for tier, per_task in self.thresholds.thresholds.items()}
        changes, n_labelled, moved = [], 0, False
        for tier, task in cells:
            change = self._refit(tier, task, breached, now)
            n_labelled += change["n"]
            changes.append(change)
            changed = change["after"] != change["before"]
            if changed or not self.thresholds.has(tier, task):
                merged.setdefault(tier, {})[task] = change["after"]
            moved = moved or changed
        before_table = self.thresholds
        if moved:
            self.thresholds = ThresholdTable(
                version=version, alpha=self.alpha, score=before_table.score, thresholds=merged
            )
        self.last_recalibration = now
        return Recalibration(reason, before_table, self.thresholds, changes, n_labelled)

    def _refit(self, tier: str, task: str, breached: bool, now: float) -> dict[str, Any]:
        state = self._state((tier, task))
        before = self.threshold(tier, task)
        fresh = self.fresh(tier, task)
        evidence = self.breach_test(tier, task, self._level(), fresh)
        if breached:
            state.trusts_shipped = False
        if state.trusts_shipped:
            live = list(state.recent)[-self.config.recalibration_window :]
            shipped = self._shipped.get((tier, task), [])[: max(0, self.config.recalibration_window - len(live))]
        else:
            live, shipped = fresh[-self.config.recalibration_window :], []
        rows = live + shipped
        fitted = self._fit(tier, task, rows)
        # Under the quality and risk rules a breach means the threshold was too loose: the
        # refit may only tighten it. Under the coverage rule it was too strict.
        tighten_only = breached and self.config.method != "coverage" and before is not None
        action: Action
        if fitted is not None:
            after: float | None = min(fitted, before) if tighten_only else fitted  # type: ignore[type-var]
            action = (
                "certified" if before is None
                else "tightened" if after < before  # type: ignore[operator]
                else "loosened" if after > before  # type: ignore[operator]
                else "unchanged"
            )
        elif breached and self.config.method != "coverage":
            after, action = None, "disabled"  # the breach test showed the tier worse than its target
        elif before is not None:
            after, action = before, "kept_uncertified"
        else:
            after, action = None, "still_none"
        fresh_n = len(fresh)
        if after != before or breached:
            # Evidence starts over under the new value (and after a breach, so one breach fires once).
            state.since, fresh_n = now, 0
        state.short_at = fresh_n if action in SHORT_OF_EVIDENCE else None
        return {
            "tier": tier, "task": task, "before": before, "after": after, "action": action,
            "rule": self.config.method, "n": len(rows), "n_live": len(live), "n_shipped": len(shipped),
            "n_correct": sum(a.correct for a in rows),
            "breach_test": None if evidence is None else evidence.evidence(),
        }

    def _fit(self, tier: str, task: str, rows: list[LabelledAnswer]) -> float | None:
        if not rows:
            return None
        calibrator = ConformalCalibrator(
            alpha=self.alpha, method=self.config.method, epsilon=self.config.epsilon, delta=self.config.delta,
            score=self.thresholds.score or "mean_nll", epsilon_per_task=self.quality_budgets or None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an uncertified cell is reported in the change itself
            calibrator.conformalize(
                np.array([math.nan if a.uncertainty is None else a.uncertainty for a in rows], dtype=float),
                [a.correct for a in rows], [tier] * len(rows), [task] * len(rows),
                tiers_per_task={task: self._tiers_for(task)},
                loss=[math.nan if a.loss is None else a.loss for a in rows],
            )
        return calibrator.thresholds_[tier][task]

    def _tiers_for(self, task: str) -> int:
        """Cheap tiers calibrated for ``task``: the quality rule splits its budget over them."""
        return max(1, sum(task in per_task for per_task in self.thresholds.thresholds.values()))

    def _level(self) -> float:
        tested = sum(self.threshold(tier, task) is not None for tier, task in self.cells())
        return (1 - self.config.breach_confidence) / max(1, tested)

    def _state(self, cell: Cell) -> _CellState:
        if cell not in self._cells:
            self._cells[cell] = _CellState(self.live_since, recent=deque(maxlen=self.config.recalibration_window))
        return self._cells[cell]

    def adopt(self, table: ThresholdTable, now: float | None = None) -> None:
        """Thresholds set from outside (a publish or rollback): evidence starts over under them."""
        self.thresholds = table
        self.live_since = time.time() if now is None else now
        for state in self._cells.values():
            state.since, state.short_at, state.trusts_shipped = self.live_since, None, False
        # The shipped rows belong to the thresholds shipped with them, not to a published table.
        self._shipped = {}


def _shipped_by_cell(rows: Sequence[CalibrationRow], seed: int) -> dict[Cell, list[LabelledAnswer]]:
    """The shipped rows per cell in a seeded random order, so a partial fill is a fair sample."""
    by_cell: dict[Cell, list[LabelledAnswer]] = {}
    for row in rows:
        by_cell.setdefault((row.tier, row.task), []).append(
            LabelledAnswer(row.tier, row.task, row.uncertainty, row.correct, "calibration", 0.0, row.id, row.loss)
        )
    rng = np.random.default_rng(seed)
    return {cell: [answers[i] for i in rng.permutation(len(answers))] for cell, answers in by_cell.items()}
