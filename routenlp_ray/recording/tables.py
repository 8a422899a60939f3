"""Recorded tier outputs of one task as aligned arrays: what offline routing and calibration read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.conformal.scores import AnswerEvidence, UncertaintyScore, mean_nll
from routenlp_ray.recording.recorder import load_records, record_path
from routenlp_ray.tasks.data import load_examples


@dataclass
class TaskTable:
    """Everything the policies need about one task's examples, tiers cheapest first."""

    task: str
    ids: list[str]
    inputs: list[str]
    quality: np.ndarray  # (n, K) per-example metric score
    correct: np.ndarray  # (n, K) score >= the task's bar
    cost: np.ndarray  # (n, K) USD of calling that tier
    uncertainty: np.ndarray  # (n, K) the uncertainty score (mean NLL by default); NaN where it cannot score
    tiers: list[str]
    answers: list[list[AnswerEvidence]] = field(default_factory=list)  # [example][tier], for learned scores
    # (K,) whether each tier serves the task. An unserved tier's column is quality 0, cost 0 and
    # NaN uncertainty: it is never accepted and costs nothing, as the cascade skips it when serving.
    served: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.served is None:
            self.served = np.ones(len(self.tiers), dtype=bool)

    @property
    def cheapest_served(self) -> int:
        return int(np.argmax(self.served))

    def rows(self, mask: np.ndarray) -> "TaskTable":
        idx = np.nonzero(mask)[0] if mask.dtype == bool else np.asarray(mask)
        return TaskTable(
            self.task, [self.ids[i] for i in idx], [self.inputs[i] for i in idx], self.quality[idx],
            self.correct[idx], self.cost[idx], self.uncertainty[idx], self.tiers,
            [self.answers[i] for i in idx] if self.answers else [],
            self.served,
        )


def build_table(
    config: RouteNLPConfig,
    records_dir: Path,
    data_dir: Path,
    task: str,
    split: str,
    score: UncertaintyScore = mean_nll,
) -> TaskTable:
    spec = config.task(task)
    tiers = [t.name for t in config.tiers]
    serving = serving_tiers(config, task)
    records = load_records(records_dir, task, split, serving)
    examples = {e.id: e for e in load_examples(spec.data_file(data_dir, split))}
    ids = sorted(set.intersection(*(set(records[t]) for t in serving)) & set(examples))
    if not ids:
        raise ValueError(f"no example of {task!r}/{split} is recorded for every tier {serving} under {records_dir}")
    references = [examples[i].reference for i in ids]
    n = len(ids)
    scored = {t: spec.score_batch([records[t][i]["text"] for i in ids], references) for t in serving}
    quality = np.column_stack([scored.get(t, np.zeros(n)) for t in tiers])
    correct = quality >= spec.success_bar
    correct[:, [t not in serving for t in tiers]] = False
    cost = np.array([[records[t][i]["cost_usd"] if t in serving else 0.0 for t in tiers] for i in ids], dtype=float)
    unserved = AnswerEvidence(text="", token_logprobs=None, task=task)
    evidence = [
        [AnswerEvidence.from_record(records[t][i], examples[i].input) if t in serving else unserved for t in tiers]
        for i in ids
    ]
    uncertainty = np.array(
        [[_nan_if_none(score(e)) if t in serving else np.nan for t, e in zip(tiers, row)] for row in evidence],
        dtype=float,
    )
    served = np.array([t in serving for t in tiers])
    return TaskTable(
        task, ids, [examples[i].input for i in ids], quality, correct.astype(float), cost, uncertainty, tiers, evidence,
        served,
    )


def serving_tiers(config: RouteNLPConfig, task: str) -> list[str]:
    """The tiers that answer ``task``, cheapest first (the last tier always does)."""
    return [t.name for t in config.tiers if t.serves(task)]


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def in_held_out_half(example_id: str) -> bool:
    # Salted: the data sets' own splits already use sha1(id) modulo 10 and 100.
    return int(hashlib.sha1(f"routenlp-router-split:{example_id}".encode()).hexdigest(), 16) % 2 == 1


def concat_tables(tables: list[TaskTable]) -> TaskTable:
    """One task's tables from several record folders or splits, as one (ids must not repeat)."""
    first = tables[0]
    if len({t.task for t in tables}) != 1 or any(t.tiers != first.tiers for t in tables):
        raise ValueError("only tables of one task over the same tiers can be joined")
    ids = [i for t in tables for i in t.ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {first.task!r}: the same example is recorded in more than one folder or split")
    return TaskTable(
        first.task,
        ids,
        [x for t in tables for x in t.inputs],
        np.vstack([t.quality for t in tables]),
        np.vstack([t.correct for t in tables]),
        np.vstack([t.cost for t in tables]),
        np.vstack([t.uncertainty for t in tables]),
        first.tiers,
        [row for t in tables for row in t.answers],
        first.served,
    )


def load_tables(
    config: RouteNLPConfig,
    records_dirs: list[Path],
    data_dir: Path,
    tasks: list[str],
    splits: list[str],
    score: UncertaintyScore = mean_nll,
) -> list[TaskTable]:
    """Every task's recorded rows across folders and splits; (folder, task, split) with no records are skipped."""
    out = []
    for task in tasks:
        parts = [
            build_table(config, folder, data_dir, task, split, score)
            for folder in records_dirs
            for split in splits
            if all(record_path(folder, task, split, tier).exists() for tier in serving_tiers(config, task))
        ]
        if parts:
            out.append(concat_tables(parts))
    if not out:
        raise ValueError(f"no records of tasks {tasks} for splits {splits} under {[str(f) for f in records_dirs]}")
    return out
