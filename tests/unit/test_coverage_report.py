from __future__ import annotations

import numpy as np
import pytest

from routenlp_ray.conformal.calibrator import wilson_interval
from routenlp_ray.recording.coverage import cascade_outcome, coverage_markdown, coverage_report
from routenlp_ray.recording.tables import TaskTable, concat_tables


def synthetic_table(n: int, seed: int, task: str = "t") -> TaskTable:
    """Exchangeable rows: the cheap tier is right more often when it is less uncertain."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, n)
    cheap_right = rng.random(n) < (1 - u)
    quality = np.column_stack([cheap_right.astype(float), np.ones(n)])
    return TaskTable(
        task=task,
        ids=[f"{task}-{i}" for i in range(n)],
        inputs=[""] * n,
        quality=quality,
        correct=quality.copy(),
        cost=np.column_stack([np.full(n, 0.1), np.full(n, 1.0)]),
        uncertainty=np.column_stack([u, np.full(n, np.nan)]),
        tiers=["cheap", "frontier"],
    )


def test_violation_rate_sits_near_alpha_and_the_table_has_every_size() -> None:
    tables = [synthetic_table(1600, 0, "a"), synthetic_table(1400, 1, "b")]
    rows = coverage_report(tables, sizes=(100, 500, 1000), alpha=0.1, repeats=30, seed=0)
    assert [r.n for r in rows] == [100, 500, 1000]
    for row in rows:
        # Split conformal: 1 - alpha <= coverage <= 1 - alpha + 1/(n0 + 1), so violations are in
        # [alpha - 1/(n0+1), alpha] in expectation; allow sampling noise over the repeats.
        assert 0.1 - 0.05 <= row.violation_rate <= 0.1 + 0.03, row
        assert row.ci_low <= row.violation_rate <= row.ci_high
        assert 0 < row.cheap_accept_rate < 1 and 0 < row.cost_reduction < 1 and 0 < row.quality_retention <= 1
        assert set(row.per_task) == {"a", "b"}
    markdown = coverage_markdown(rows)
    assert "| 100 | 0.1 |" in markdown and "Wilson" in markdown


def test_sizes_without_enough_rows_are_left_out_and_small_cells_get_no_threshold() -> None:
    rows = coverage_report([synthetic_table(300, 0)], sizes=(100, 250, 500), alpha=0.05, repeats=5, min_held_out=50)
    assert [r.n for r in rows] == [100, 250]
    tiny = synthetic_table(80, 3)
    tiny.correct[:, 0] = 0  # the cheap tier is never right: it can never get a threshold
    [row] = coverage_report([tiny], sizes=(20,), alpha=0.05, repeats=3)
    assert row.no_threshold_share == 1.0 and row.violation_rate is None and row.cheap_accept_rate == 0.0


def test_cascade_outcome_accepts_under_threshold_and_pays_for_every_tier_tried() -> None:
    table = synthetic_table(4, 0)
    table.uncertainty[:, 0] = [0.1, 0.9, np.nan, 0.5]
    answered, paid, quality = cascade_outcome(table, [0.5, None])
    assert answered.tolist() == [0, 1, 1, 0]
    assert paid.tolist() == pytest.approx([0.1, 1.1, 1.1, 0.1])
    assert quality.tolist() == [table.quality[0, 0], 1.0, 1.0, table.quality[3, 0]]


def test_wilson_interval_and_joining_tables() -> None:
    low, high = wilson_interval(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)
    other = synthetic_table(3, 1, "t")
    other.ids = ["u-0", "u-1", "u-2"]
    joined = concat_tables([synthetic_table(5, 0, "t"), other])
    assert len(joined.ids) == 8 and joined.uncertainty.shape == (8, 2)
    with pytest.raises(ValueError, match="same example"):
        concat_tables([synthetic_table(5, 0, "t"), synthetic_table(5, 0, "t")])


def test_a_cheap_tier_that_does_not_serve_the_task_is_not_a_cell_without_a_threshold() -> None:
    two = synthetic_table(600, 4)
    # A middle tier (an LLM serving only chat in the embedded default) that skips this task.
    table = TaskTable(
        task=two.task, ids=two.ids, inputs=two.inputs,
        quality=np.column_stack([two.quality[:, 0], np.zeros(600), two.quality[:, 1]]),
        correct=np.column_stack([two.correct[:, 0], np.zeros(600), two.correct[:, 1]]),
        cost=np.column_stack([two.cost[:, 0], np.zeros(600), two.cost[:, 1]]),
        uncertainty=np.column_stack([two.uncertainty[:, 0], np.full(600, np.nan), two.uncertainty[:, 1]]),
        tiers=["cheap", "chat_llm", "frontier"], served=np.array([True, False, True]),
    )
    [row] = coverage_report([table], sizes=(300,), alpha=0.1, repeats=5)
    assert row.no_threshold_share == 0.0  # the cheap tier always gets one; the unserved tier is not counted
    frontier_only = synthetic_table(600, 5, "frontier_only")
    frontier_only.served = np.array([False, True])
    [row] = coverage_report([table, frontier_only], sizes=(300,), alpha=0.1, repeats=5)
    assert row.tasks == [table.task]  # a task no cheap tier serves has nothing to calibrate
