"""The quality rule certified over groups (contracts): valid for new groups, and what it costs in power."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp_ray.conformal.calibrator import ConformalCalibrator, quality_controlling_threshold


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
