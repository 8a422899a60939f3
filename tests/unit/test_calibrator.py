from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from routenlp_ray import NotFittedError
from routenlp_ray.conformal.calibrator import (
    ConformalCalibrator,
    conformal_threshold,
    quality_controlling_threshold,
    risk_controlling_threshold,
)


def test_paper_rule_on_a_hand_computed_example() -> None:
    # n0 = 9, alpha = 0.2: rank = ceil(0.8 * 10) = 8 -> the 8th smallest.
    assert conformal_threshold([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6], alpha=0.2) == 0.8
    # Ties: the threshold is the tied value, and u <= delta accepts every tied answer.
    assert conformal_threshold([0.5] * 9, alpha=0.2) == 0.5
    # Too few correct answers (rank > n0) and an empty set give no threshold.
    assert conformal_threshold([0.1, 0.2], alpha=0.1) is None
    assert conformal_threshold([], alpha=0.1) is None


def test_coverage_holds_on_exchangeable_data_over_1000_trials() -> None:
    rng = np.random.default_rng(0)
    alpha, n0 = 0.1, 200
    coverage = []
    for _ in range(1000):
        # Uniform uncertainties: P(u <= delta) for a fresh correct answer is delta itself.
        coverage.append(conformal_threshold(rng.random(n0).tolist(), alpha))
    mean = float(np.mean(coverage))
    low, high = 1 - alpha, 1 - alpha + 1 / (n0 + 1)
    slack = 3 * np.std(coverage) / math.sqrt(len(coverage))
    assert low - slack <= mean <= high + slack


def test_risk_control_holds_in_at_least_1_minus_delta_of_trials() -> None:
    rng = np.random.default_rng(1)
    epsilon, delta, n = 0.1, 0.1, 500

    def true_accepted_error(threshold: float) -> float:
        # u ~ U(0, 1); P(wrong | u) = u. Accepted error = E[u | u <= t] = t / 2.
        return threshold / 2

    violations = 0
    trials = 300
    for _ in range(trials):
        u = rng.random(n)
        wrong = rng.random(n) < u
        threshold = risk_controlling_threshold(u.tolist(), (~wrong).tolist(), epsilon, delta)
        if threshold is not None and true_accepted_error(threshold) > epsilon:
            violations += 1
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_calibrator_per_tier_and_task_with_warnings() -> None:
    u = [0.1, 0.2, 0.3, 0.9] * 10 + [0.5, 0.6]
    correct = [True, True, True, False] * 10 + [True, False]
    tiers = ["small"] * 40 + ["small"] * 2
    tasks = ["a"] * 40 + ["b"] * 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator = ConformalCalibrator(alpha=0.1).conformalize(u, correct, tiers, tasks)
    assert calibrator.thresholds_["small"]["a"] == 0.3
    assert calibrator.thresholds_["small"]["b"] is None
    assert any("1 correct calibration answers out of 2" in str(w.message) for w in caught)
    assert calibrator.predict([0.25, 0.35, 0.1], ["small"] * 3, ["a", "a", "b"]).tolist() == [True, False, False]
    table = calibrator.to_table("cal-1")
    assert table.get("small", "a") == 0.3 and table.has("small", "b") and table.get("small", "b") is None


def test_predict_before_conformalize_is_an_error() -> None:
    with pytest.raises(NotFittedError, match="call conformalize before predict"):
        ConformalCalibrator().predict([0.1], ["t"], ["x"])


def test_risk_rule_certifies_a_sure_head_whose_strictest_answers_are_too_few_to_test_alone() -> None:
    from routenlp_ray.conformal.calibrator import min_accepted_for_risk, risk_controlling_threshold

    rng = np.random.default_rng(0)
    u = np.sort(rng.uniform(0, 1, 300))
    correct = np.ones(300, dtype=bool)
    correct[150:] = rng.random(150) < 0.5  # sure answers all right, unsure ones a coin flip
    assert min_accepted_for_risk(0.05, 0.1) == 45  # 0.95**45 < 0.1 <= 0.95**44
    threshold = risk_controlling_threshold(u, correct, epsilon=0.05, delta=0.1)
    assert threshold is not None and u[120] <= threshold < u[200]
    accepted = u <= threshold
    assert (~correct[accepted]).mean() <= 0.05
    # With fewer answers than the minimum, nothing can be certified.
    assert risk_controlling_threshold(u[:40], correct[:40], epsilon=0.05, delta=0.1) is None


def test_quality_control_holds_in_at_least_1_minus_delta_of_trials() -> None:
    rng = np.random.default_rng(2)
    epsilon, delta, n = 0.04, 0.1, 500

    def true_loss(threshold: float) -> float:
        # u ~ U(0, 1); P(wrong | u) = u**2. Loss = P(u <= t and wrong) = t**3 / 3.
        return min(threshold, 1.0) ** 3 / 3

    violations = 0
    trials = 300
    for _ in range(trials):
        u = rng.random(n)
        wrong = rng.random(n) < u**2
        threshold = quality_controlling_threshold(u, ~wrong, epsilon, delta)
        if threshold is not None and true_loss(threshold) > epsilon:
            violations += 1
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_quality_rule_accepts_far_more_than_the_risk_rule_at_the_same_error_budget() -> None:
    # A 90%-right tier whose errors sit among its less sure answers: the task may lose 4% of its
    # queries to wrong accepted answers, which allows accepting most of them.
    rng = np.random.default_rng(0)
    u = rng.random(1000)
    correct = rng.random(1000) >= 0.2 * u**2 * 3 / 2  # P(wrong | u) = 0.3 u^2, 10% wrong overall
    quality = quality_controlling_threshold(u, correct, epsilon=0.04, delta=0.1)
    risk = risk_controlling_threshold(u, correct, epsilon=0.04, delta=0.1)
    assert quality is not None and risk is not None
    assert (u <= quality).mean() > (u <= risk).mean() + 0.2
    assert ((u <= quality) & ~correct).mean() <= 0.04


def test_quality_rule_counts_unscorable_answers_as_queries_and_never_accepts_them() -> None:
    u = np.array([0.1] * 90 + [np.nan] * 10)
    correct = np.array([True] * 90 + [False] * 10)
    assert quality_controlling_threshold(u, correct, epsilon=0.04, delta=0.1) == 0.1


def test_quality_rule_splits_each_task_budget_over_its_cheap_tiers() -> None:
    rng = np.random.default_rng(3)
    n = 400
    u = rng.random(n)
    correct = rng.random(n) >= 0.2 * u
    one = ConformalCalibrator(method="quality", epsilon_per_task={"t": 0.05}).conformalize(u, correct, ["a"] * n, ["t"] * n)
    both = ConformalCalibrator(method="quality", epsilon_per_task={"t": 0.05}).conformalize(
        np.concatenate([u, u]), np.concatenate([correct, correct]), ["a"] * n + ["b"] * n, ["t"] * (2 * n)
    )
    alone = one.thresholds_["a"]["t"]
    shared = both.thresholds_["a"]["t"]
    assert alone == quality_controlling_threshold(u, correct, 0.05, 0.1)
    assert shared == quality_controlling_threshold(u, correct, 0.025, 0.05) and shared < alone
    with pytest.raises(ValueError, match="epsilon_per_task\\['t'\\] must be in \\(0, 1\\), got 1.5"):
        ConformalCalibrator(method="quality", epsilon_per_task={"t": 1.5})


def test_quality_rule_gives_no_threshold_to_a_tier_wrong_on_most_of_what_it_would_accept() -> None:
    u = np.linspace(0, 1, 200)
    never_right = np.zeros(200, dtype=bool)
    # Accepting its surest 1% would stay within a 4% budget, but every one of them is wrong.
    assert quality_controlling_threshold(u, never_right, epsilon=0.04, delta=0.1) is None
    mostly_right = np.ones(200, dtype=bool)
    mostly_right[:3] = False  # its three surest answers are wrong, the rest right
    threshold = quality_controlling_threshold(u, mostly_right, epsilon=0.04, delta=0.1)
    assert threshold is not None and threshold >= u[5]


def test_graded_quality_control_holds_in_at_least_1_minus_delta_of_trials() -> None:
    # A graded metric: every answer is "right" by the bar, but gives up 0.3 * u of its score.
    # True loss of threshold t = E[0.3 u; u <= t] = 0.15 t^2; the 0/1 rule would accept everything.
    rng = np.random.default_rng(3)
    epsilon, delta, n = 0.04, 0.1, 300
    violations = 0
    trials = 200
    for _ in range(trials):
        u = rng.random(n)
        loss = 0.3 * u * rng.random(n) * 2  # mean 0.3 u, in [0, 0.6 u]
        threshold = quality_controlling_threshold(u, np.ones(n, bool), epsilon, delta, loss=loss)
        assert threshold is not None and threshold < 1.0
        if 0.15 * threshold**2 > epsilon:
            violations += 1
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert quality_controlling_threshold(u, np.ones(n, bool), epsilon, delta) == u.max()


def test_hoeffding_bentkus_p_value_is_small_only_well_below_the_budget() -> None:
    from routenlp_ray.conformal.calibrator import hoeffding_bentkus_p_value

    assert hoeffding_bentkus_p_value(0.0, 500, 0.04) < 1e-3
    assert hoeffding_bentkus_p_value(0.04, 500, 0.04) == 1.0
    assert hoeffding_bentkus_p_value(0.02, 500, 0.04) < hoeffding_bentkus_p_value(0.03, 500, 0.04) < 1.0


def test_calibrate_table_controls_graded_loss_but_keeps_the_binomial_rule_for_0_1_metrics() -> None:
    from routenlp_ray.recording.coverage import calibrate_table, quality_loss
    from routenlp_ray.recording.tables import TaskTable

    rng = np.random.default_rng(0)
    n = 400
    u = rng.random(n)

    def table(cheap_quality: np.ndarray) -> TaskTable:
        quality = np.stack([cheap_quality, np.ones(n)], axis=1)
        return TaskTable("t", [str(i) for i in range(n)], [""] * n, quality, quality >= 0.6,
                         np.zeros((n, 2)), np.stack([u, np.full(n, np.nan)], axis=1), ["cheap", "frontier"])

    graded = table(1 - 0.35 * u)  # always above the bar, never a perfect copy
    assert np.allclose(quality_loss(graded)[:, 0], 0.35 * u)
    threshold = calibrate_table(graded, 0.04, "quality")[0]
    assert threshold is not None and 0.35 * u[u <= threshold].sum() / n <= 0.04
    binary = table((rng.random(n) > 0.02).astype(float))
    assert np.isnan(quality_loss(binary)).all()
    accepted = calibrate_table(binary, 0.04, "quality")[0]
    assert accepted == quality_controlling_threshold(u, binary.correct[:, 0], 0.04, 0.1)
