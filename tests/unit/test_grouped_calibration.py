"""The quality rule over groups (contracts): the exact rule, valid for new groups at a price in power,
and the design-effect rule, approximate but usable with tens of groups."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp_ray.conformal.calibrator import ConformalCalibrator, design_effect, quality_controlling_threshold


def test_a_perfect_tier_needs_57_groups_at_epsilon_4_percent() -> None:
    # Zero loss certifies epsilon 0.04 at delta 0.1 only once 0.96^n <= 0.1 (Hoeffding), i.e. n >= 57 groups,
    # however many queries each group has.
    u = np.linspace(0.0, 1.0, 57 * 20)
    ok = np.ones(u.size, dtype=bool)
    assert quality_controlling_threshold(u, ok, 0.04, 0.1) == pytest.approx(1.0)
    assert quality_controlling_threshold(u, ok, 0.04, 0.1, groups=[str(i % 56) for i in range(u.size)]) is None
    assert quality_controlling_threshold(u, ok, 0.04, 0.1, groups=[str(i % 57) for i in range(u.size)]) == pytest.approx(1.0)


def test_sure_wrong_answers_packed_in_a_few_groups_count_once_per_group() -> None:
    rng = np.random.default_rng(0)
    n_groups, per_group = 100, 20
    groups = np.repeat(np.arange(n_groups), per_group).astype(str)
    u = rng.random(n_groups * per_group)
    ok = np.ones(u.size, dtype=bool)
    # Two whole groups (contracts) are answered wrong, and surely: 2% of the rows, 2% of the groups.
    bad = np.isin(groups, ["0", "1"])
    ok[bad], u[bad] = False, u[bad] * 0.05
    # Over 2,000 exchangeable rows, 40 errors certify 4% easily: everything is accepted.
    assert quality_controlling_threshold(u, ok, 0.04, 0.1) == pytest.approx(u.max())
    # Over 100 groups, 2 bad ones do not: the threshold stays below the sure-but-wrong answers.
    by_groups = quality_controlling_threshold(u, ok, 0.04, 0.1, groups=groups.tolist())
    assert by_groups is None or by_groups < u[bad].max()


def test_the_calibrator_takes_groups_only_for_the_quality_rule_and_whole_tasks() -> None:
    u = np.linspace(0, 1, 200)
    ok = np.ones(200, dtype=bool)
    tiers, tasks = ["s"] * 200, ["a"] * 100 + ["b"] * 100
    # Task a: 10 groups (too few to certify); task b has no group ids, so it keeps the row-level test.
    groups = [str(i % 10) for i in range(100)] + [None] * 100
    cal = ConformalCalibrator(method="quality", epsilon=0.04, delta=0.1)
    with pytest.warns(UserWarning, match="task 'a'"):
        cal.conformalize(u, ok, tiers, tasks, groups=groups)
    assert cal.thresholds_["s"]["a"] is None and cal.thresholds_["s"]["b"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="groups needs the quality method"):
        ConformalCalibrator(method="risk").conformalize(u, ok, tiers, tasks, groups=groups)
    with pytest.raises(ValueError, match="1 ids for 200 rows"):
        cal.conformalize(u, ok, tiers, tasks, groups=["x"])
    with pytest.raises(ValueError, match="groups has 1 ids for 200 queries"):
        quality_controlling_threshold(u, np.ones(200, bool), 0.04, 0.1, groups=["x"])


def test_the_design_effect_is_one_for_independent_losses_and_grows_when_they_come_in_groups() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(100), 20)
    scattered = (rng.random(groups.size) < 0.02).astype(float)
    assert design_effect(scattered, groups) == pytest.approx(1.0, abs=0.3)
    packed = np.isin(groups, [0, 1]).astype(float)  # the same 2% of rows, as two whole groups
    assert design_effect(packed, groups) > 15
    assert design_effect(np.zeros(groups.size), groups) == 1.0
    assert design_effect(packed, np.zeros(groups.size, dtype=int)) == 1.0


def _clustered_draw(rng: np.random.Generator, n_groups: int, per_group: int, spread: float):
    # Each group (contract) has its own difficulty: its answers are wrong together.
    difficulty = rng.normal(0.0, spread, n_groups)
    groups = np.repeat(np.arange(n_groups), per_group)
    u = np.round(rng.random(groups.size), 2)
    wrong = rng.random(groups.size) < 1 / (1 + np.exp(-(-6 + 5 * u + difficulty[groups])))
    return u, ~wrong, groups


@pytest.mark.parametrize("spread", [0.0, 2.0])
def test_the_design_effect_rule_keeps_the_bound_on_new_groups_when_errors_cluster(spread: float) -> None:
    rng = np.random.default_rng(1)
    # The loss share each threshold really has on new groups, from a large sample of them.
    u_new, ok_new, _ = _clustered_draw(rng, 20_000, 20, spread)
    true_loss = {t: float(((u_new <= t) & ~ok_new).mean()) for t in np.unique(u_new)}
    violations = {"rows": 0, "design_effect": 0}
    accepted = {"rows": 0.0, "design_effect": 0.0}
    draws = 200
    for _ in range(draws):
        u, ok, groups = _clustered_draw(rng, 50, 20, spread)
        for rule in violations:
            threshold = quality_controlling_threshold(u, ok, 0.04, 0.1, group_rule="design_effect",
                                                      groups=None if rule == "rows" else groups.astype(str).tolist())
            violations[rule] += threshold is not None and true_loss[threshold] > 0.04
            accepted[rule] += 0.0 if threshold is None else float((u_new <= threshold).mean()) / draws
    if spread == 0.0:
        # Independent rows: the rule is the row-level one, at no cost.
        assert abs(accepted["design_effect"] - accepted["rows"]) < 0.01
        assert violations["design_effect"] <= 0.1 * draws
    else:
        # Clustered errors: the row-level test breaks its 10% (13.5% here); the design effect holds it.
        assert violations["rows"] > 0.12 * draws
        assert violations["design_effect"] <= 0.1 * draws
        assert accepted["design_effect"] < accepted["rows"]


def test_an_unknown_group_rule_is_named() -> None:
    with pytest.raises(ValueError, match="group_rule must be one of"):
        quality_controlling_threshold(np.linspace(0, 1, 10), np.ones(10, bool), 0.04, 0.1, group_rule="loose")
    with pytest.raises(ValueError, match="'loose'"):
        ConformalCalibrator(method="quality", group_rule="loose")
