"""The coverage report: how often calibrated thresholds reject correct answers, by calibration size.

For each calibration size ``n`` and each repeat, every task's recorded examples are split at
random into ``n`` calibration rows and the rest held out. Thresholds are calibrated per
(tier, task) on the calibration rows; on the held-out rows we count

- coverage violations: correct answers of a non-final tier whose uncertainty is above the
  threshold (the paper's miscoverage, which should be about ``alpha``);
- the cascade's cost and quality with those thresholds, against sending everything to the
  last (frontier) tier.

Violations are pooled over repeats and tasks, with a 95% Wilson interval. Repeats reuse the
same examples, so the pooled interval is narrower than independent data would give; the
spread across repeats is reported next to it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from routenlp_ray.cascade import accepts_array
from routenlp_ray.conformal.calibrator import ConformalCalibrator, Method, wilson_interval
from routenlp_ray.recording.tables import TaskTable

DEFAULT_SIZES = (100, 250, 500, 1000)
PAPER_VIOLATIONS_AT_005 = {100: 7.2, 250: 5.8, 500: 4.2, 1000: 3.9}


@dataclass
class CoverageRow:
    """One calibration size, pooled over tasks and repeats."""

    n: int
    alpha: float
    tasks: list[str]
    repeats: int
    correct_held_out: int
    violations: int
    violation_rate: float | None
    ci_low: float | None
    ci_high: float | None
    per_repeat_mean: float | None
    per_repeat_std: float | None
    # Share of (tier, task, repeat) cells where too few correct answers left the tier with no threshold.
    no_threshold_share: float
    cheap_accept_rate: float
    cost_reduction: float
    quality_retention: float
    per_task: dict[str, dict[str, float | None]] = field(default_factory=dict)


def cascade_outcome(table: TaskTable, thresholds: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the tier that answers, the cost paid and the quality got, starting at the cheapest tier.

    A tier answers when its uncertainty is at or under its threshold; the last tier always does.
    A tier with no threshold is skipped, as the serving cascade skips it, and costs nothing.
    """
    n, k = table.uncertainty.shape
    answered = np.full(n, k - 1)
    undecided = np.ones(n, dtype=bool)
    paid = np.zeros(n)
    for tier, delta in enumerate(thresholds[: k - 1]):
        if delta is None:
            continue
        paid[undecided] += table.cost[undecided, tier]
        accepted = undecided & accepts_array(table.uncertainty[:, tier], delta)
        answered[accepted] = tier
        undecided &= ~accepted
    paid[undecided] += table.cost[undecided, k - 1]
    return answered, paid, table.quality[np.arange(n), answered]


def coverage_report(
    tables: Sequence[TaskTable],
    sizes: Sequence[int] = DEFAULT_SIZES,
    alpha: float = 0.05,
    repeats: int = 50,
    seed: int = 0,
    method: Method = "coverage",
    min_held_out: int = 50,
) -> list[CoverageRow]:
    """One row per calibration size; a task joins a size only if ``min_held_out`` rows remain."""
    rng = np.random.default_rng(seed)
    out: list[CoverageRow] = []
    for n in sizes:
        # A task only the last tier serves (fin_summarization in the embedded default) has nothing to calibrate.
        usable = [t for t in tables if len(t.ids) >= n + min_held_out and t.served[:-1].any()]
        if not usable:
            continue
        totals = {"correct": 0, "violations": 0, "cells": 0, "no_threshold": 0}
        per_repeat: list[float] = []
        cost, base_cost, quality, base_quality, accepted, answered_rows = 0.0, 0.0, 0.0, 0.0, 0, 0
        per_task: dict[str, dict[str, float | None]] = {}
        for table in usable:
            task_correct = task_violations = 0
            for _ in range(repeats):
                order = rng.permutation(len(table.ids))
                calib, held = table.rows(order[:n]), table.rows(order[n:])
                thresholds = calibrate_table(calib, alpha, method)
                correct, violations = _violations(held, thresholds)
                task_correct += correct
                task_violations += violations
                # A cheap tier that does not serve the task has no threshold by design, not for lack of rows.
                served = [k for k in range(len(thresholds) - 1) if table.served[k]]
                totals["cells"] += len(served)
                totals["no_threshold"] += sum(thresholds[k] is None for k in served)
                answered, paid, got = cascade_outcome(held, thresholds)
                cost += paid.sum()
                base_cost += held.cost[:, -1].sum()
                quality += got.sum()
                base_quality += held.quality[:, -1].sum()
                accepted += int((answered < len(table.tiers) - 1).sum())
                answered_rows += len(answered)
                if correct:
                    per_repeat.append(violations / correct)
            totals["correct"] += task_correct
            totals["violations"] += task_violations
            per_task[table.task] = {
                "rows": float(len(table.ids)),
                "violation_rate": task_violations / task_correct if task_correct else None,
            }
        low, high = wilson_interval(totals["violations"], totals["correct"])
        out.append(
            CoverageRow(
                n=n,
                alpha=alpha,
                tasks=[t.task for t in usable],
                repeats=repeats,
                correct_held_out=totals["correct"],
                violations=totals["violations"],
                violation_rate=totals["violations"] / totals["correct"] if totals["correct"] else None,
                ci_low=None if math.isnan(low) else low,
                ci_high=None if math.isnan(high) else high,
                per_repeat_mean=float(np.mean(per_repeat)) if per_repeat else None,
                per_repeat_std=float(np.std(per_repeat)) if per_repeat else None,
                no_threshold_share=totals["no_threshold"] / totals["cells"] if totals["cells"] else 0.0,
                cheap_accept_rate=accepted / answered_rows if answered_rows else 0.0,
                cost_reduction=1 - cost / base_cost if base_cost else 0.0,
                quality_retention=quality / base_quality if base_quality else 0.0,
                per_task=per_task,
            )
        )
    return out


def quality_loss(table: TaskTable) -> np.ndarray:
    """(n, K) the quality each tier's answer gives up against the last tier's, in [0, 1].

    With a graded metric, an answer above the task's bar can still lose quality, and retention
    counts that; with a 0/1 metric it is the usual wrong-answer loss (NaN: "1 when wrong")."""
    q = np.asarray(table.quality, dtype=float)
    if np.all((q == 0) | (q == 1)):
        return np.full(q.shape, np.nan)
    return np.clip(q[:, -1:] - q, 0.0, 1.0)


def calibrate_table(
    table: TaskTable, alpha: float, method: Method = "coverage", delta: float = 0.1
) -> list[float | None]:
    """Thresholds for each tier of one task; the last tier is unconditional (None).

    With ``method="risk"``, ``alpha`` is the accepted-error bound epsilon, certified at level ``delta``;
    with ``method="quality"`` it is the task's budget of accepted-and-wrong answers. Only tiers
    that serve the task are calibrated: the others are skipped when serving, and never accept.
    """
    calibrator = ConformalCalibrator(alpha=alpha, method=method, epsilon=alpha, delta=delta)
    k = len(table.tiers)
    served = [i for i in range(k - 1) if table.served[i]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too-few-correct cells are counted in no_threshold_share
        calibrator.conformalize(
            table.uncertainty[:, served].T.ravel(),
            (table.correct[:, served] > 0).T.ravel(),
            np.repeat([table.tiers[i] for i in served], len(table.ids)),
            [table.task] * (len(table.ids) * len(served)),
            loss=quality_loss(table)[:, served].T.ravel() if method == "quality" else None,
        )
    return [calibrator.thresholds_.get(tier, {}).get(table.task) for tier in table.tiers[: k - 1]] + [None]


def _violations(table: TaskTable, thresholds: Sequence[float | None]) -> tuple[int, int]:
    """(correct held-out answers, those rejected) over tiers that have a threshold.

    A tier left with no threshold (too few correct calibration answers) never accepts: that is
    the safe failure, counted in ``no_threshold_share``, not a breach of the coverage promise.
    """
    correct_total = violations = 0
    for tier, delta in enumerate(thresholds[:-1]):
        if delta is None:
            continue
        correct = table.correct[:, tier] > 0
        u = table.uncertainty[correct, tier]
        correct_total += int(correct.sum())
        violations += int((~accepts_array(u, delta)).sum())
    return correct_total, violations


def rows_as_dicts(rows: Sequence[CoverageRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def coverage_markdown(rows: Sequence[CoverageRow], title: str = "Coverage violations on held-out data") -> str:
    """The paper's table layout: violation rate with a 95% CI per calibration size, plus cost and quality."""
    lines = [
        f"## {title}",
        "",
        "| n (calibration) | alpha | violation rate | 95% Wilson CI | per-split mean ± sd | paper (alpha 0.05) "
        "| no-threshold cells | cheap-tier answers | cost reduction | quality retention | tasks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER_VIOLATIONS_AT_005.get(r.n) if math.isclose(r.alpha, 0.05) else None
        lines.append(
            f"| {r.n} | {r.alpha} | {_pct(r.violation_rate)} | {_pct(r.ci_low)} – {_pct(r.ci_high)} "
            f"| {_pct(r.per_repeat_mean)} ± {_pct(r.per_repeat_std)} | {f'{paper}%' if paper else '–'} "
            f"| {r.no_threshold_share:.0%} | {r.cheap_accept_rate:.1%} | {r.cost_reduction:.1%} "
            f"| {r.quality_retention:.1%} | {', '.join(r.tasks)} |"
        )
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"
