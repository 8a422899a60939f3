"""Distil mined frontier answers into a specialist tier: each touched head refitted on its pairs plus the new ones.

A specialist head is a linear model on a frozen encoder (or an answer cache), so "continuing"
it means refitting on the pairs it was distilled from plus the loop's new (query, frontier
answer) pairs, with the regularisation its base chose: two students then differ only in data.
Heads of tasks with no new pairs are carried over unchanged, so the result is still a whole tier,
written as a new checksummed artifact that a release publishes and the tier hot-swaps to.

Where the base pairs come from, first match wins:

1. ``pairs.jsonl`` in the head's folder (every artifact ``distill_specialists`` writes now carries it);
2. an answer cache built by reference to data rows reads those rows (its fingerprint is checked);
3. an older artifact that carries neither: the frontier is asked again for its answers on the
   data split the artifact was distilled from, as ``routenlp distill-specialists`` did, and the
   result must match the manifest's data fingerprint exactly, or the refit is refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.specialists.artifact import data_fingerprint, read_head, read_manifest, read_pairs, write_artifact
from routenlp_ray.specialists.heads import source_pairs
from routenlp_ray.specialists.training import (
    FINETUNED_HEAD,
    FineTuneSettings,
    SpecialistTrainingConfig,
    TaskPairs,
    distill_specialists,
)

__all__ = ["SpecialistRefitSettings", "base_pairs", "refit_specialist"]


class SpecialistRefitSettings(StrictModel):
    """How the loop refits a specialist tier."""

    base_split: str = Field(
        "train",
        description=(
            "For an artifact that carries no pairs: the data split its heads were distilled from (as "
            "`distill-specialists --split`); the frontier's answers on it must match the manifest's fingerprint."
        ),
    )
    base_seed: int | None = Field(
        0, description="With base_split: the order the split was read in (`distill-specialists --seed`; None: file order).",
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs of the Ray Train worker that refits the heads.")
    encoding_cache: str | None = Field(
        None, description="SQLite file of encoder outputs keyed by text: base pairs already encoded are not encoded again.",
    )
    new_tasks: bool = Field(
        True,
        description="Give a task the artifact has no head for its first head, from the mined pairs alone (its "
                    "parser decides the kind: label, entities or an answer cache).",
    )
    min_new_task_pairs: int = Field(8, ge=1, description="Fewest mined pairs a task's first head is fitted on.")


def base_pairs(
    artifact: str | Path,
    tasks: Sequence[str],
    config: Any,
    data_dir: str | Path,
    settings: SpecialistRefitSettings,
    teacher: Any = None,
) -> dict[str, TaskPairs]:
    """The pairs each of ``tasks``' heads in ``artifact`` was fitted on, checked against its manifest.

    ``config`` is the :class:`RouteNLPConfig` (for task prompts and the frontier); ``teacher`` the
    frontier's engine, built from it when an older artifact needs its pairs asked for again.
    """
    from routenlp_ray.loop.teacher import frontier_answers
    from routenlp_ray.tasks.data import load_examples

    folder, data_dir = Path(artifact), Path(data_dir)
    manifest = read_manifest(folder)
    out: dict[str, TaskPairs] = {}
    for task in tasks:
        entry = manifest.tasks.get(task)
        if entry is None:
            raise ConfigError(f"specialist artifact {str(folder)!r} has no head for task {task!r}; "
                              f"it has {sorted(manifest.tasks)}")
        head = read_head(folder / task)
        pairs = read_pairs(folder / task)
        how = "its pairs.jsonl"
        if pairs is None and "source" in head:
            pairs, how = source_pairs(head["source"], data_dir), f"the rows of {head['source']['path']}"
        if pairs is None:
            if teacher is None:
                from routenlp_ray.engines.factory import make_engine

                teacher = make_engine(config.frontier)
            spec = config.task(task)
            inputs = [e.input for e in load_examples(spec.data_file(data_dir, settings.base_split),
                                                        seed=settings.base_seed)]
            texts, answers, _ = frontier_answers(teacher, spec, inputs)
            pairs, how = (texts, answers), f"the frontier's answers on {task}/{settings.base_split}"
        if data_fingerprint(*pairs) != entry.data_fingerprint:
            raise ConfigError(
                f"specialist artifact {str(folder)!r}, task {task!r}: {how} ({len(pairs[0])} pairs) are not the "
                f"{entry.n_examples} pairs its head was fitted on (data fingerprint differs); set "
                "loop.specialist.base_split and base_seed to how it was distilled, or redistil it with "
                "`routenlp distill-specialists` (new artifacts carry their pairs)"
            )
        out[task] = TaskPairs(kind=entry.kind, texts=pairs[0], answers=pairs[1])
    return out


def refit_specialist(
    artifact: str | Path,
    base: Mapping[str, TaskPairs],
    extra: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    version: str,
    settings: SpecialistRefitSettings,
    storage_path: str | Path,
    run_name: str,
    new_task_kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Refit the heads of the tasks in ``extra`` (dicts with task, input, answer) on base + extra pairs.

    A task in ``extra`` with no base pairs gets its first head, of the kind ``new_task_kinds`` names,
    from its new pairs alone, when it has at least ``settings.min_new_task_pairs`` of them (fewer
    are left out and reported). A Ray Train job, like every distillation; resumable in the sense
    that a finished ``output_dir`` is returned as is (artifacts are immutable).
    """
    started = time.perf_counter()
    folder, output = Path(artifact), Path(output_dir)
    manifest = read_manifest(folder)
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for example in extra:
        by_task.setdefault(example["task"], []).append(example)
    kinds = dict(new_task_kinds or {}) if settings.new_tasks else {}
    unknown = sorted(set(by_task) - set(base) - set(kinds))
    if unknown:
        raise ValueError(f"new pairs for tasks {unknown} that have no base pairs; base has {sorted(base)}")
    too_few = {t: len(by_task[t]) for t in set(by_task) - set(base)
               if len(by_task[t]) < settings.min_new_task_pairs}
    for task in too_few:
        del by_task[task]
    empty = TaskPairs.model_construct(texts=[], answers=[])
    pairs = {
        task: TaskPairs(kind=base[task].kind if task in base else kinds[task],
                        texts=base.get(task, empty).texts + [e["input"] for e in examples],
                        answers=base.get(task, empty).answers + [e["answer"] for e in examples])
        for task, examples in by_task.items()
    }
    # The C each base head chose; an answer cache has none, and a first head picks its own.
    task_Cs = {task: [float(manifest.tasks[task].metrics["C"])] for task in pairs
               if task in manifest.tasks and "C" in manifest.tasks[task].metrics}
    # A fine-tuned head is continued, not started over: its layers and classifier are the starting point.
    finetune = {task: _continued_settings(folder / task) for task in pairs
                if task in manifest.tasks and read_head(folder / task).get("kind") in FINETUNED_HEAD.values()}
    training = SpecialistTrainingConfig(encoder_source=manifest.encoder.source, task_Cs=task_Cs, finetune=finetune,
                                        cpus_per_worker=settings.cpus_per_worker,
                                        encoding_cache=settings.encoding_cache)
    if not output.exists():
        if pairs:
            distill_specialists(pairs, output, version, training, storage_path=storage_path, run_name=run_name,
                                carry_from=folder)
        else:  # nothing new for any task: the base tier, as a release of its own
            write_artifact(output, version, manifest.encoder.source,
                           {t: (folder / t, e) for t, e in manifest.tasks.items()})
    return {
        "artifact_dir": str(output),
        "init_artifact": str(folder.resolve()),
        "n_examples": len(extra),
        "refitted_tasks": {task: {"base_pairs": len(base[task].texts) if task in base else 0,
                                  "new_pairs": len(by_task[task])}
                           for task in sorted(by_task)},
        "new_tasks": sorted(set(by_task) - set(base)),
        "new_tasks_with_too_few_pairs": too_few,
        "task_Cs": task_Cs,
        "continued_finetuned_heads": sorted(finetune),
        "wall_seconds": time.perf_counter() - started,
    }


def _continued_settings(head_folder: Path) -> FineTuneSettings:
    """The settings a fine-tuned head was trained with, continuing from its own weights."""
    head = read_head(head_folder)
    training = head.get("training", {})
    return FineTuneSettings(
        trained_layers=int(head["trained_layers"]), max_length=int(head["max_length"]),
        epochs=int(training.get("max_epochs", FineTuneSettings().epochs)),
        learning_rate=float(training.get("learning_rate", FineTuneSettings().learning_rate)),
        head_learning_rate=float(training.get("head_learning_rate", FineTuneSettings().head_learning_rate)),
        batch_size=int(training.get("batch_size", FineTuneSettings().batch_size)),
        quantize=bool(head.get("quantize", False)), init_from=str(head_folder.resolve()),
    )
