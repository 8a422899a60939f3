"""Acceptance thresholds per (tier, task) from labelled calibration data.

Two rules:

- ``method="coverage"`` (the paper's split-conformal rule). Among the ``n0`` calibration
  answers that were correct, delta is the ``ceil((1 - alpha) * (n0 + 1))``-th smallest
  uncertainty. For a new *correct* answer exchangeable with them,
  ``1 - alpha <= P(u <= delta) <= 1 - alpha + 1 / (n0 + 1)`` (the upper bound needs no ties).
  It promises that good answers are rarely thrown away; it says nothing about how many
  *wrong* answers slip through.
- ``method="risk"`` (Learn-then-Test). Picks the largest delta whose error rate among
  *accepted* answers is at most ``epsilon``, with probability at least ``1 - delta_conf``
  over the calibration draw: thresholds are tested from strict to loose with an exact
  binomial test of H0 "error rate among accepted > epsilon" (the Clopper-Pearson bound),
  stopping at the first that fails (fixed-sequence testing, so no multiplicity correction).
  This is the guarantee users usually want: the cheap tier's accepted answers are right.
- ``method="quality"`` (risk control on the quality a task loses). Picks the largest delta
  whose share of *all* calibration queries on which the tier's answer is accepted and wrong is
  at most the task's budget ``epsilon`` (by default ``1 - quality_target``), with probability
  at least ``1 - delta_conf``. That share is what accepting cheap answers costs the task's
  quality against an always-right last tier. The loss is monotone in the threshold, so the
  same fixed-sequence binomial test applies with no multiplicity correction; the test runs on
  every query rather than on the accepted ones, which makes it far more powerful than
  ``risk`` at the same budget. With ``m`` cheap tiers calibrated for a task, each gets
  ``epsilon / m`` at level ``delta_conf / m`` (a union bound), so the task's total loss stays
  within its budget. With a graded metric (BERTScore, ROUGE-L, entity F1) an accepted answer
  can be "correct" and still lose quality, so the loss of accepting it is the score it gives up
  against the last tier's answer, in [0, 1], and the test is the Hoeffding-Bentkus bound of
  Learn-then-Test instead of the exact binomial one (which holds only for 0/1 losses).

With too few examples (correct ones for coverage, accepted ones for risk) a tier gets no
threshold for that task, so it never accepts it, and a warning says why.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.stats import binom, binomtest

from routenlp_ray._exceptions import NotFittedError
from routenlp_ray.cascade import accepts
from routenlp_ray.conformal.scores import AnswerEvidence, get_uncertainty_score
from routenlp_ray.conformal.thresholds import ThresholdTable

if TYPE_CHECKING:
    from routenlp_ray.conformal.answer_scorer import LearnedAnswerScorer

# How the quality rule treats queries that come in groups (contracts); see quality_controlling_threshold.
GroupRule = Literal["exact", "design_effect"]
GROUP_RULES: tuple[str, ...] = ("exact", "design_effect")


def conformal_threshold(correct_uncertainties: Sequence[float], alpha: float) -> float | None:
    """The paper's rule; None when ``ceil((1 - alpha) * (n0 + 1)) > n0`` (too few correct answers)."""
    values = np.sort(np.asarray([u for u in correct_uncertainties if u is not None and not math.isnan(u)], dtype=float))
    n0 = values.size
    rank = math.ceil((1 - alpha) * (n0 + 1))
    if n0 == 0 or rank > n0:
        return None
    return float(values[rank - 1])


def risk_controlling_threshold(
    uncertainty: Sequence[float], correct: Sequence[bool], epsilon: float, delta: float
) -> float | None:
    """Learn-then-Test: the loosest threshold whose accepted-error rate is certified <= epsilon.

    Fixed-sequence testing from strict to loose, stopping at the first threshold whose
    hypothesis "risk > epsilon" cannot be rejected at level ``delta``. The sequence starts at
    the first threshold that accepts at least ``min_accepted_for_risk(epsilon, delta)``
    answers: below that, even zero errors cannot reject, and starting there would stop the
    sequence before it could certify anything. Where the sequence starts depends on the
    uncertainties alone, never on the labels, so the family-wise error stays at ``delta``.
    """
    u = np.asarray(uncertainty, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    keep = ~np.isnan(u)
    u, ok = u[keep], ok[keep]
    smallest = min_accepted_for_risk(epsilon, delta)
    chosen: float | None = None
    for candidate in np.unique(u):  # strict to loose
        accepted = u <= candidate
        n, errors = int(accepted.sum()), int((~ok[accepted]).sum())
        if n < smallest:
            continue
        # p-value of H0 "risk > epsilon": P(Binomial(n, epsilon) <= errors).
        if binom.cdf(errors, n, epsilon) > delta:
            break
        chosen = float(candidate)
    return chosen


def hoeffding_bentkus_p_value(mean_loss: float, n: int, epsilon: float) -> float:
    """p-value of H0 "expected loss > epsilon" from the mean of ``n`` losses in [0, 1] (Learn-then-Test's
    Hoeffding-Bentkus bound; Angelopoulos et al., 2021). Valid for any bounded loss, not only 0/1 ones."""
    r = min(mean_loss, epsilon)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (0.0 if r == 0 else r * math.log(r / epsilon)) + (1 - r) * math.log((1 - r) / (1 - epsilon))
    hoeffding = math.exp(-n * kl)
    bentkus = math.e * float(binom.cdf(math.ceil(n * mean_loss - 1e-9), n, epsilon))
    return min(1.0, hoeffding, bentkus)


def quality_controlling_threshold(
    uncertainty: Sequence[float],
    correct: Sequence[bool],
    epsilon: float,
    delta: float,
    max_accepted_error: float = 0.5,
    loss: Sequence[float] | None = None,
    groups: Sequence[str] | None = None,
    group_rule: GroupRule = "exact",
) -> float | None:
    """The loosest threshold whose quality loss, as a share of all queries, is certified <= epsilon.

    With ``groups`` (one id per query, e.g. the contract a clause comes from) the queries of one
    group are no longer taken as independent, which the row-level test assumes. ``group_rule``:

    - ``"exact"``: the certified quantity is the loss share of a *new group*: each group's loss
      share is the mean over its queries, and the Hoeffding-Bentkus bound runs on the mean of
      those over the ``n_groups`` groups. It holds when groups are exchangeable, however strongly
      the queries of one group depend on each other. The price is power: with ``epsilon`` 0.04 at
      ``delta`` 0.1 even a tier with no loss at all needs 57 groups.
    - ``"design_effect"``: the row-level test on an effective sample size, ``n / deff``, where the
      design effect ``deff`` (at least 1) is the cluster-robust variance of the accepted loss share
      over its variance as if the rows were independent (:func:`design_effect`). It certifies the
      per-query loss share on new groups approximately, as survey statistics does for clustered
      samples: it is not a finite-sample guarantee, but it works with tens of groups, where the
      exact rule certifies nothing.

    The loss of accepting an answer is 1 if it is wrong, 0 if right; or, with ``loss``, the
    quality given up by accepting each answer, in [0, 1] (a graded metric). An answer with no
    uncertainty (NaN) is never accepted but still counts among the queries.
    The budget allows accepting a few wrong answers, but a tier that is wrong on more than
    ``max_accepted_error`` of what it would accept earns nothing by it: the threshold then falls
    back to the loosest certified one that is right on most of what it accepts (None if none
    is). A stricter threshold than the certified one only lowers the loss, so the guarantee holds.
    """
    u = np.asarray(uncertainty, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    graded = None if loss is None else np.clip(np.asarray(loss, dtype=float), 0.0, 1.0)
    n = u.size
    finite = ~np.isnan(u)
    if group_rule not in GROUP_RULES:
        raise ValueError(f"group_rule must be one of {list(GROUP_RULES)}, got {group_rule!r}")
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} ids for {n} queries")
        _, group_index = np.unique(np.asarray(groups), return_inverse=True)
        group_sizes = np.bincount(group_index)
        row_loss = (~ok).astype(float) if graded is None else graded
    chosen: float | None = None
    for candidate in np.unique(u[finite]):  # strict to loose; the loss only grows
        accepted = finite & (u <= candidate)
        errors = int((accepted & ~ok).sum())
        if groups is not None and group_rule == "design_effect":
            accepted_loss = row_loss * accepted
            n_eff = n / design_effect(accepted_loss, group_index)
            if graded is None:
                # The exact binomial on the shrunken sample; it is the row-level test when deff is 1.
                p_value = float(binom.cdf(math.floor(accepted_loss.mean() * n_eff + 1e-9), math.floor(n_eff), epsilon))
            else:
                p_value = hoeffding_bentkus_p_value(float(accepted_loss.mean()), math.floor(n_eff), epsilon)
        elif groups is not None:
            shares = np.bincount(group_index, weights=row_loss * accepted, minlength=group_sizes.size) / group_sizes
            p_value = hoeffding_bentkus_p_value(float(shares.mean()), group_sizes.size, epsilon)
        elif graded is None:
            # p-value of H0 "loss > epsilon": P(Binomial(n, epsilon) <= errors), exact for 0/1 losses.
            p_value = float(binom.cdf(errors, n, epsilon))
        else:
            p_value = hoeffding_bentkus_p_value(float(graded[accepted].sum()) / n, n, epsilon)
        if p_value > delta:
            break
        if errors <= max_accepted_error * int(accepted.sum()):
            chosen = float(candidate)
    return chosen


def design_effect(row_loss: np.ndarray, group_index: np.ndarray) -> float:
    """How much clustering widens the variance of a mean loss: cluster-robust over independent, at least 1.

    ``row_loss`` holds each query's loss (0 where not accepted), ``group_index`` each query's group
    as an integer. The cluster-robust (CR1) variance of the mean sums each group's deviation from
    the mean before squaring, so errors that come together in a few contracts count as the few
    draws they are. With no loss, or one group, there is nothing to widen: 1.
    """
    loss = np.asarray(row_loss, dtype=float)
    n = loss.size
    n_groups = int(np.unique(group_index).size)
    independent = float(loss.var()) / n
    if n_groups < 2 or independent <= 0:
        return 1.0
    deviation = np.bincount(group_index, weights=loss - loss.mean())
    clustered = n_groups / (n_groups - 1) * float((deviation**2).sum()) / n**2
    return max(1.0, clustered / independent)


def min_accepted_for_risk(epsilon: float, delta: float) -> int:
    """The fewest accepted answers for which zero errors certify risk <= epsilon at level delta."""
    return math.ceil(math.log(delta) / math.log(1 - epsilon))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson interval of a proportion such as a coverage estimate; (nan, nan) with no trials."""
    if trials == 0:
        return (math.nan, math.nan)
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


Method = Literal["coverage", "risk", "quality"]
METHODS: tuple[str, ...] = ("coverage", "risk", "quality")


class ConformalCalibrator:
    """MAPIE-style: ``fit`` the score (if it learns), ``conformalize`` on calibration data, ``predict``.

    ``conformalize(uncertainty, correct, tiers, tasks)`` takes one row per (query, tier)
    answer: its uncertainty (NaN when unscorable), whether it met the task's bar, and the
    tier and task it belongs to; the quality rule also takes ``loss``, the quality each answer
    gives up (graded metrics; default: 1 when wrong). ``score`` is a fixed score name ("mean_nll", ...) or a
    ``LearnedAnswerScorer``; ``fit`` trains the latter on a *separate* split, because the
    conformal guarantee needs calibration data the score never saw.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        method: Method = "coverage",
        epsilon: float = 0.1,
        delta: float = 0.1,
        score: "str | LearnedAnswerScorer" = "mean_nll",
        epsilon_per_task: Mapping[str, float] | None = None,
        group_rule: GroupRule = "exact",
    ) -> None:
        if group_rule not in GROUP_RULES:
            raise ValueError(f"group_rule must be one of {list(GROUP_RULES)}, got {group_rule!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        for task, value in (epsilon_per_task or {}).items():
            if not 0 < value < 1:
                raise ValueError(f"epsilon_per_task[{task!r}] must be in (0, 1), got {value}")
        self.alpha = alpha
        self.method = method
        self.group_rule = group_rule
        self.epsilon = epsilon
        self.delta = delta
        self.score = score
        self.epsilon_per_task = epsilon_per_task

    @property
    def score_name(self) -> str:
        return self.score if isinstance(self.score, str) else "learned"

    def fit(self, evidence: Sequence[AnswerEvidence], correct: Sequence[bool]) -> "ConformalCalibrator":
        """Train a learned score on its own split; fixed scores have nothing to learn."""
        if not isinstance(self.score, str):
            self.score.fit(evidence, correct)
        return self

    def uncertainty(self, evidence: Sequence[AnswerEvidence]) -> np.ndarray:
        """The score of each answer; NaN where it cannot be scored (no logprobs)."""
        if not isinstance(self.score, str):
            return np.asarray(self.score.score(evidence), dtype=float)
        score = get_uncertainty_score(self.score)
        values = [score(e) for e in evidence]
        return np.array([math.nan if v is None else v for v in values], dtype=float)

    def conformalize(
        self,
        uncertainty: Sequence[float],
        correct: Sequence[bool],
        tiers: Sequence[str],
        tasks: Sequence[str],
        tiers_per_task: Mapping[str, int] | None = None,
        loss: Sequence[float] | None = None,
        groups: Sequence[str | None] | None = None,
    ) -> "ConformalCalibrator":
        """Fit every (tier, task) in the rows. ``tiers_per_task`` overrides how many cheap tiers
        share a task's quality budget, for a refit of some tiers alone (default: the tiers in the rows).
        ``loss`` (quality rule only; NaN: 1 when wrong) is the quality accepting each answer gives up.
        ``groups`` (quality rule only): each row's group id (a contract), or None; a (tier, task) whose rows
        all have one is certified for new groups by ``group_rule`` (see :func:`quality_controlling_threshold`)."""
        u = np.asarray(uncertainty, dtype=float)
        ok = np.asarray(correct, dtype=bool)
        tier_arr, task_arr = np.asarray(tiers), np.asarray(tasks)
        if not (len(u) == len(ok) == len(tier_arr) == len(task_arr)):
            raise ValueError("uncertainty, correct, tiers and tasks must have the same length")
        group_arr = None if groups is None else np.asarray(groups, dtype=object)
        if group_arr is not None and (len(group_arr) != len(u) or self.method != "quality"):
            raise ValueError(f"groups needs the quality method and one id per row; got {len(group_arr)} ids for "
                             f"{len(u)} rows with method {self.method!r}")
        graded = None
        if loss is not None:
            graded = np.asarray(loss, dtype=float)
            if len(graded) != len(u):
                raise ValueError("loss must have one value per row")
            graded = np.where(np.isnan(graded), (~ok).astype(float), graded)
        self.thresholds_: dict[str, dict[str, float | None]] = {}
        self.counts_: dict[str, dict[str, dict[str, int]]] = {}
        # The quality rule splits each task's budget over the tiers calibrated for it.
        tiers_per_task = {
            t: len(set(tier_arr[task_arr == t].tolist())) for t in set(task_arr.tolist())
        } | dict(tiers_per_task or {})
        for tier in sorted(set(tier_arr.tolist())):
            for task in sorted(set(task_arr[tier_arr == tier].tolist())):
                rows = (tier_arr == tier) & (task_arr == task)
                row_loss = None if graded is None else graded[rows]
                row_groups = None
                if group_arr is not None and all(g is not None for g in group_arr[rows]):
                    row_groups = [str(g) for g in group_arr[rows]]
                threshold = self._threshold(u[rows], ok[rows], task, tiers_per_task[task], row_loss, row_groups)
                self.thresholds_.setdefault(tier, {})[task] = threshold
                self.counts_.setdefault(tier, {})[task] = {"n": int(rows.sum()), "n_correct": int(ok[rows].sum())}
                if threshold is None:
                    warnings.warn(self._why_none(tier, task, int(rows.sum()), int(ok[rows].sum())), stacklevel=2)
        return self

    def task_epsilon(self, task: str) -> float:
        """The error budget of ``task``: its own under ``epsilon_per_task``, else ``epsilon``."""
        return (self.epsilon_per_task or {}).get(task, self.epsilon)

    def _threshold(self, u: np.ndarray, ok: np.ndarray, task: str, tiers_for_task: int,
                   loss: np.ndarray | None = None, groups: list[str] | None = None) -> float | None:
        if self.method == "coverage":
            return conformal_threshold(u[ok].tolist(), self.alpha)
        if self.method == "quality":
            share = 1 / tiers_for_task
            # A task whose losses are all 0/1 keeps the exact binomial test.
            if loss is not None and np.all((loss == 0) | (loss == 1)):
                loss = None
            return quality_controlling_threshold(u, ok, self.task_epsilon(task) * share, self.delta * share,
                                                 loss=loss, groups=groups, group_rule=self.group_rule)
        return risk_controlling_threshold(u.tolist(), ok.tolist(), self.task_epsilon(task), self.delta)

    def _why_none(self, tier: str, task: str, n: int, n_correct: int) -> str:
        if n == 0:
            return f"tier {tier!r} task {task!r}: empty calibration set; the tier will not accept this task"
        if self.method == "coverage":
            needed = math.ceil(1 / self.alpha) - 1
            return (
                f"tier {tier!r} task {task!r}: {n_correct} correct calibration answers out of {n}; alpha={self.alpha} "
                f"needs at least {needed}, so the tier will not accept this task"
            )
        if self.method == "quality":
            return (
                f"tier {tier!r} task {task!r}: no threshold keeps the accepted-and-wrong share <= its part of "
                f"{self.task_epsilon(task):.3g} with confidence {1 - self.delta} on {n} answers ({n_correct} correct); "
                "the tier will not accept this task"
            )
        return (
            f"tier {tier!r} task {task!r}: no threshold keeps the accepted-error rate <= {self.task_epsilon(task)} with "
            f"confidence {1 - self.delta} on {n} answers ({n_correct} correct); the tier will not accept this task"
        )

    def _check(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("call conformalize before predict")

    def predict(self, uncertainty: Sequence[float], tiers: Sequence[str], tasks: Sequence[str]) -> np.ndarray:
        """Boolean array: would each answer be accepted (u <= delta)?"""
        self._check()
        return np.array(
            [
                accepts(u, self.thresholds_.get(tier, {}).get(task), is_last=False)
                for u, tier, task in zip(uncertainty, tiers, tasks)
            ],
            dtype=bool,
        )

    def to_table(self, version: str) -> ThresholdTable:
        self._check()
        return ThresholdTable(version=version, alpha=self.alpha, score=self.score_name, thresholds=self.thresholds_)

    def save(self, path: str | os.PathLike[str], version: str) -> ThresholdTable:
        """Write the thresholds as a versioned ``ThresholdTable`` (atomically)."""
        table = self.to_table(version)
        table.save(path)
        return table

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ConformalCalibrator":
        """A calibrator that predicts with a saved table's thresholds."""
        table = ThresholdTable.load(path)
        calibrator = cls(alpha=table.alpha or 0.1, score=table.score or "mean_nll")
        calibrator.thresholds_ = {tier: dict(per_task) for tier, per_task in table.thresholds.items()}
        calibrator.counts_ = {}
        return calibrator
