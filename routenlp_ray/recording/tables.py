"""Recorded tier outputs of one task as aligned arrays: what offline routing and calibration read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.conformal.scores import mean_nll
from routenlp_ray.recording.recorder import load_records
from routenlp_ray.tasks.data import load_examples, task_file
from routenlp_ray.tasks.registry import task_spec_from_config


@dataclass
class TaskTable:
    """Everything the policies need about one task's examples, tiers cheapest first."""

    task: str
    ids: list[str]
    inputs: list[str]
    quality: np.ndarray  # (n, K) per-example metric score
    correct: np.ndarray  # (n, K) score >= the task's bar
    cost: np.ndarray  # (n, K) USD of calling that tier
    uncertainty: np.ndarray  # (n, K) mean NLL; NaN where a tier gives no logprobs
    tiers: list[str]

    def rows(self, mask: np.ndarray) -> "TaskTable":
        idx = np.nonzero(mask)[0]
        return TaskTable(
            self.task, [self.ids[i] for i in idx], [self.inputs[i] for i in idx], self.quality[idx],
            self.correct[idx], self.cost[idx], self.uncertainty[idx], self.tiers,
        )


def build_table(config: RouteNLPConfig, records_dir: Path, data_dir: Path, task: str, split: str) -> TaskTable:
    spec = task_spec_from_config(config.task(task))
    tiers = [t.name for t in config.tiers]
    records = load_records(records_dir, task, split, tiers)
    examples = {e.id: e for e in load_examples(task_file(data_dir, task, split))}
    ids = sorted(set.intersection(*(set(records[t]) for t in tiers)) & set(examples))
    if not ids:
        raise ValueError(f"no example of {task!r}/{split} is recorded for every tier {tiers} under {records_dir}")
    references = [examples[i].reference for i in ids]
    quality = np.column_stack([spec.score_batch([records[t][i]["text"] for i in ids], references) for t in tiers])
    correct = quality >= spec.success_bar
    cost = np.array([[records[t][i]["cost_usd"] for t in tiers] for i in ids], dtype=float)
    uncertainty = np.array(
        [[_nan_if_none(mean_nll(records[t][i]["token_logprobs"])) for t in tiers] for i in ids], dtype=float
    )
    return TaskTable(task, ids, [examples[i].input for i in ids], quality, correct.astype(float), cost, uncertainty, tiers)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def in_held_out_half(example_id: str) -> bool:
    # Salted: the data sets' own splits already use sha1(id) modulo 10 and 100.
    return int(hashlib.sha1(f"routenlp-router-split:{example_id}".encode()).hexdigest(), 16) % 2 == 1
