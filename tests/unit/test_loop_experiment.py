"""The LoRA loop experiment's statistics and report, on hand-made per-query rows (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp_ray.bench.loop_experiment import LoopExperimentSettings, _summarise_budget, paired_cost_rows
from routenlp_ray.bench.loop_experiment_report import loop_experiment_markdown
from routenlp_ray.loop.iteration import HeldOutRows


def held(task: str, ids: list[str], paid: list[float], frontier: list[float]) -> HeldOutRows:
    n = len(ids)
    return HeldOutRows(task=task, ids=ids, answered=np.zeros(n, dtype=int), paid=np.asarray(paid),
                       quality=np.ones(n), frontier_cost=np.asarray(frontier), frontier_quality=np.ones(n),
                       threshold=1.0, cheap_accuracy=1.0)


def test_paired_rows_align_each_query_across_students_whatever_their_order() -> None:
    rows = {
        "base": {"t": held("t", ["a", "b", "c"], [1.0, 2.0, 3.0], [10.0, 20.0, 30.0])},
        "targeted": {"t": held("t", ["c", "a", "b"], [0.3, 0.1, 0.2], [30.0, 10.0, 20.0])},
        # A query one student has no answer for is left out for all, so the pairs stay paired.
        "untargeted": {"t": held("t", ["b", "a"], [0.02, 0.01], [20.0, 10.0])},
    }
    paired = paired_cost_rows(rows, ["t"])
    assert paired["frontier"].tolist() == [10.0, 20.0]
    assert paired["base"].tolist() == [1.0, 2.0]
    assert paired["targeted"].tolist() == [0.1, 0.2]
    assert paired["untargeted"].tolist() == [0.01, 0.02]


def seed_record(seed: int, targeted_cost: float, untargeted_cost: float) -> dict:
    frontier = np.full(50, 1.0)
    rows = {"frontier": frontier, "base": np.full(50, 0.5), "targeted": np.full(50, targeted_cost),
            "untargeted": np.full(50, untargeted_cost)}
    per_task = {"t": {v: {"cost_reduction": 1 - rows[v].mean(), "cheap_accuracy": 0.5, "quality_retention": 1.0}
                      for v in ("base", "targeted", "untargeted")}}
    return {
        "seed": seed, "budget": 8, "selected_cost_share": 0.4,
        "selected_clusters": [{"cluster": 0, "size": 5, "tasks": {"t": 5}, "share": 0.4, "cost_usd": 1.0}],
        "targeted_tasks": {"t": 8}, "untargeted_tasks": {"t": 8},
        "cost_reduction": {v: 1 - rows[v].mean() for v in ("base", "targeted", "untargeted")},
        "quality_retention": {v: 1.0 for v in ("base", "targeted", "untargeted")},
        "accuracy": {"base": 0.5, "targeted": 0.6, "untargeted": 0.55},
        "gain": {"targeted": 0.5 - targeted_cost, "untargeted": 0.5 - untargeted_cost},
        "per_task": per_task, "gate": {"passed": True, "reasons": []}, "_rows": rows,
        "clusters": [{"rank": 1, "cluster": 0, "selected": True, "failures": 5, "tasks": {"t": 5}, "cost_share": 0.4,
                      "eval_queries": 50, "eval_frontier_usd": 50.0, "base_saved_usd": 25.0,
                      "targeted_gain_usd": 50 * (0.5 - targeted_cost), "untargeted_gain_usd": 50 * (0.5 - untargeted_cost)}],
        "gain_by_cluster": {"targeted": {"selected": 0.5 - targeted_cost, "other": 0.0},
                            "untargeted": {"selected": 0.5 - untargeted_cost, "other": 0.0}},
    }


@pytest.fixture()
def settings() -> LoopExperimentSettings:
    return LoopExperimentSettings(tasks=["t"], budget=8, top_cost_shares=[0.4], bootstrap=50,
                                  distill={"max_steps": 2, "batch_size": 2})


def test_a_budget_summary_gives_the_gains_their_ratio_and_a_ci_around_it(settings) -> None:
    # Targeted saves 0.2 and 0.3 of the frontier's cost over base; untargeted 0.1 each time.
    summary = _summarise_budget(0.4, [seed_record(0, 0.3, 0.4), seed_record(1, 0.2, 0.4)], settings)
    assert summary["gain"]["targeted"]["mean"] == pytest.approx(0.25)
    assert summary["gain"]["targeted"]["sd"] == pytest.approx(np.std([0.2, 0.3], ddof=1))
    assert summary["gain"]["untargeted"]["mean"] == pytest.approx(0.1)
    assert summary["ratio"] == pytest.approx(2.5)
    low, high = summary["bootstrap"]["ratio_ci95"]
    assert 2.0 - 1e-9 <= low <= 2.5 <= high <= 3.0 + 1e-9
    assert summary["per_task"]["t"]["targeted_gain"]["mean"] == pytest.approx(0.25)
    assert summary["accuracy_gain"]["targeted"]["mean"] == pytest.approx(0.1)
    assert all("_rows" not in seed for seed in summary["seeds"])
    assert summary["gain_by_cluster"]["targeted"]["selected"]["mean"] == pytest.approx(0.25)


def test_each_held_out_query_counts_in_its_nearest_failure_cluster(tmp_path) -> None:
    from routenlp_ray.bench.loop_clusters import cluster_savings, selected_split
    from routenlp_ray.config import StorageConfig
    from routenlp_ray.telemetry import QueryLog

    class Axis:
        """Card texts on one axis, loan texts on the other."""

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.array([[1.0, 0.0] if "card" in t else [0.0, 1.0] for t in texts])

    storage = StorageConfig(log_uri=str(tmp_path / "log"), spool_dir=str(tmp_path / "spool"))
    with QueryLog(storage) as log:
        for qid, text in (("f1", "card lost"), ("f2", "card late"), ("f3", "loan rate")):
            log.append_sync("queries", {"id": qid, "ts": "2026-01-01T00:00:00+00:00", "task": "t", "input": text})
    mined = {"top_clusters": [7], "clusters": [
        {"cluster": 7, "size": 2, "tasks": {"t": 2}, "share": 0.7, "query_ids": ["f1", "f2"]},
        {"cluster": 3, "size": 1, "tasks": {"t": 1}, "share": 0.3, "query_ids": ["f3"]}]}
    inputs = {"a": "my card", "b": "card again", "c": "loan please"}
    rows = {
        "base": {"t": held("t", ["a", "b", "c"], [10.0, 10.0, 10.0], [10.0, 10.0, 10.0])},
        "targeted": {"t": held("t", ["a", "b", "c"], [1.0, 2.0, 10.0], [10.0, 10.0, 10.0])},
        "untargeted": {"t": held("t", ["c", "a", "b"], [4.0, 10.0, 10.0], [10.0, 10.0, 10.0])},
    }
    card, loan = cluster_savings(mined, storage.log_uri, rows, inputs, Axis())
    assert (card["cluster"], card["selected"], card["eval_queries"], card["targeted_gain_usd"]) == (7, True, 2, 17.0)
    assert (loan["cluster"], loan["selected"], loan["untargeted_gain_usd"], loan["targeted_gain_usd"]) == (3, False, 6.0, 0.0)
    split = selected_split([card, loan])
    assert split["targeted"] == {"selected": pytest.approx(17 / 30), "other": 0.0}
    assert split["untargeted"] == {"selected": 0.0, "other": pytest.approx(6 / 30)}


def test_the_report_states_the_ratio_and_warns_when_its_ci_reaches_zero(settings) -> None:
    def report(seeds: list[dict]) -> dict:
        point = _summarise_budget(0.4, seeds, settings)
        return {"settings": settings.model_dump(mode="json"), "headline": point, "curve": [point], "wall_s": 60.0,
                "student_tier": "smollm2", "starts_from": {"release": None, "artifact": "a"}}

    clear = loop_experiment_markdown(report([seed_record(0, 0.3, 0.4), seed_record(1, 0.2, 0.4)]), "cmd")
    assert "**2.50×**" in clear and "carries no information" not in clear
    assert "| 0 | 8 |" in clear and "+20.00" in clear  # the per-seed table
    # Untargeted gains of opposite signs: the ratio's CI spans 0 and the report says to read the difference.
    noisy = loop_experiment_markdown(report([seed_record(0, 0.3, 0.45), seed_record(1, 0.2, 0.56)]), "cmd")
    assert "carries no information" in noisy
    # Both students lose: the quotient of two losses is not a ratio of gains.
    losing = loop_experiment_markdown(report([seed_record(0, 0.6, 0.55), seed_record(1, 0.7, 0.6)]), "cmd")
    assert "**n/a (no untargeted gain)**" in losing
    assert "rehearsed" not in clear  # records made without rehearsal say nothing of it
    rehearsing = [{**seed_record(0, 0.3, 0.4), "rehearsed": 2}, {**seed_record(1, 0.2, 0.4), "rehearsed": 2}]
    assert "8 examples, 2 of them rehearsed from the pairs the current adapter" in loop_experiment_markdown(
        report(rehearsing), "cmd")


def test_the_experiments_rehearsal_share_reaches_the_loop(settings) -> None:
    from routenlp_ray.bench.loop_experiment import _loop_settings

    assert _loop_settings(settings, 0.4, seed=0).rehearsal_share == 0.25
    assert _loop_settings(settings.model_copy(update={"rehearsal_share": 0.0}), 0.4, seed=0).rehearsal_share == 0.0


def test_the_memo_encoder_embeds_each_text_once_and_returns_the_encoders_vectors() -> None:
    from routenlp_ray.bench.loop_experiment import MemoEncoder

    class Counting:
        dim = 2

        def __init__(self) -> None:
            self.seen: list[str] = []

        def encode(self, texts: list[str]) -> np.ndarray:
            self.seen += texts
            return np.array([[len(t), 1.0] for t in texts])

    inner = Counting()
    memo = MemoEncoder(inner)
    first = memo.encode(["ab", "c", "ab"])
    again = memo.encode(["c", "abc"])
    assert first.tolist() == [[2, 1], [1, 1], [2, 1]] and again.tolist() == [[1, 1], [3, 1]]
    assert inner.seen == ["ab", "c", "abc"] and memo.dim == 2


def test_held_out_rows_read_every_row_once_with_a_threshold_fitted_on_the_other_half() -> None:
    from routenlp_ray.loop.iteration import held_out_rows
    from routenlp_ray.recording.tables import TaskTable, in_held_out_half

    n = 40
    ids = [f"q{i}" for i in range(n)]
    u = np.linspace(0, 1, n)
    quality = np.c_[np.ones(n), np.ones(n)]
    table = TaskTable("t", ids, [""] * n, quality, quality > 0, np.c_[np.full(n, 0.1), np.ones(n)],
                      np.c_[u, np.zeros(n)], ["cheap", "frontier"])
    seen: list[set[str]] = []

    def threshold_for(calib: TaskTable) -> float:
        seen.append(set(calib.ids))
        return float(np.median(calib.uncertainty[:, 0]))

    [rows] = held_out_rows([table], threshold_for)
    assert sorted(rows.ids) == sorted(ids) and len(rows.paid) == n
    first = {i for i in ids if in_held_out_half(i)}
    assert seen == [set(ids) - first, first]  # each half calibrated on the other
    position = {i: k for k, i in enumerate(rows.ids)}
    for i, fitted_without in ((i, rows.thresholds[0] if i in first else rows.thresholds[1]) for i in ids):
        accepted = u[ids.index(i)] <= fitted_without
        assert rows.answered[position[i]] == (0 if accepted else 1)
