"""Distil the frontier into specialist heads as a Ray Train job, and write a versioned artifact.

:func:`distill_specialists` runs one :class:`ray.train.torch.TorchTrainer` worker that loads the
shared encoder once and fits one head per task from (query, frontier answer) pairs: a linear head
on frozen features or, for the label and entity tasks ``SpecialistTrainingConfig.finetune`` names,
the encoder's top layers fine-tuned with transformers ``Trainer`` (a ``finetuned_label`` classifier
or a ``finetuned_entities`` tagger). The heads
come back as the run's checkpoint (kept in Ray Train storage, so a finished run is on record),
and the driver assembles them into an artifact folder with a checksummed manifest
(:mod:`routenlp_ray.specialists.artifact`) that the specialist engine and the release store load.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from routenlp_ray._exceptions import RouteNLPError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.models.encoder import MINILM_SOURCE
from routenlp_ray.specialists.artifact import (
    HeadEntry,
    HeadKind,
    data_fingerprint,
    read_manifest,
    write_artifact,
    write_pairs,
)

__all__ = [
    "FineTuneSettings",
    "SpecialistTrainingConfig",
    "TaskPairs",
    "distill_specialists",
    "fit_heads",
    "head_kind_for_parser",
]

# The task parser decides the head: labels are classified, entity lists tagged, free text cached.
_HEAD_FOR_PARSER: dict[str, HeadKind] = {"label": "label", "entities": "entities", "text": "cache"}
# The head a task named in SpecialistTrainingConfig.finetune gets instead; an answer cache has no fine-tuned form.
FINETUNED_HEAD: dict[str, str] = {"label": "finetuned_label", "entities": "finetuned_entities"}


def head_kind_for_parser(parser: str) -> HeadKind:
    return _HEAD_FOR_PARSER[parser]


class TaskPairs(StrictModel):
    """One task's distillation data: queries and the frontier's answers to them."""

    kind: HeadKind = Field(description="Head to fit: label, entities or cache.")
    texts: list[str] = Field(min_length=1, description="Client queries, as the tier receives them (raw input).")
    answers: list[str] = Field(min_length=1, description="The frontier's answer to each query, verbatim.")
    source: dict[str, str] | None = Field(
        None,
        description=(
            "Cache heads only: the JSONL rows (path relative to a data folder, input and answer fields) that hold "
            "exactly these pairs; the artifact then references them instead of copying them."
        ),
    )


class FineTuneSettings(StrictModel):
    """How a task's fine-tuned head is trained (:mod:`routenlp_ray.specialists.finetuned`: label or entity heads)."""

    trained_layers: int = Field(2, ge=1, description="Top encoder layers fine-tuned per task; the rest are a shared frozen trunk.")
    epochs: int = Field(8, ge=1, description="Most epochs trained; the best epoch on the held-out slice is kept.")
    learning_rate: float = Field(1e-4, gt=0, description="Learning rate of the fine-tuned encoder layers.")
    head_learning_rate: float = Field(2e-3, gt=0, description="Learning rate of the new classifier.")
    batch_size: int = Field(32, ge=1, description="Training batch size (length-grouped).")
    max_length: int | None = Field(
        None, ge=8, description="Tokens kept per query; default 256 for a label head, 512 (all MiniLM takes) for a tagger.")
    quantize: bool = Field(
        False,
        description="Run the frozen trunk in int8 (dynamic quantization) in training and serving, and the trained "
                    "top in int8 when serving: about 2.5x faster on CPU; the top learns on the int8 trunk's states.")
    init_from: str | None = Field(
        None,
        description="A fine-tuned head folder to continue from (a loop refit): its layers, and its classifier rows "
                    "for the classes it knows, are the starting point instead of the packaged encoder.",
    )


class SpecialistTrainingConfig(StrictModel):
    """How heads are fitted and where the Ray Train worker runs."""

    encoder_source: str = Field(MINILM_SOURCE, description="The frozen encoder the heads sit on.")
    Cs: list[float] = Field(
        default_factory=lambda: [1.0, 10.0, 100.0],
        min_length=1,
        description="Inverse regularisation strengths tried; the best on a held-out slice of the pairs is kept.",
    )
    task_Cs: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Per-task Cs instead of Cs (a loop refit keeps the C its base head chose, so students differ only in data).",
    )
    holdout: float = Field(0.1, gt=0, lt=1, description="Share of the pairs held out to pick C (then refit on all).")
    lexical_features: int = Field(
        20_000, ge=0,
        description="Word n-gram TF-IDF columns a label head adds to the sentence vector (0: the sentence vector only).",
    )
    finetune: dict[str, FineTuneSettings] = Field(
        default_factory=dict,
        description="Label and entity tasks that fine-tune the encoder's top layers (finetuned_label or "
                    "finetuned_entities heads) instead of fitting a linear head on frozen features; task -> settings.",
    )
    keep_pairs: bool = Field(
        True,
        description="Store each head's training pairs (pairs.jsonl) in the artifact, so a loop refit starts from them; "
                    "without them it asks the frontier again. Off for an artifact committed where data must not be copied.",
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs the worker reserves; also its torch thread count.")
    seed: int = Field(0, description="Seed of the held-out split.")
    encoding_cache: str | None = Field(
        None,
        description="SQLite file of encoder outputs keyed by text (see models.encoding_cache): a refit then encodes "
                    "only pairs it has never seen. Must be on a filesystem the Ray Train worker shares.",
    )


def fit_heads(
    pairs: dict[str, TaskPairs], config: SpecialistTrainingConfig, output_dir: Path
) -> dict[str, dict[str, Any]]:
    """Fit every task's head on one shared encoder and save each to ``output_dir/<task>``; returns metrics."""
    from routenlp_ray.specialists.heads import SpecialistEncoder, make_head

    encoder = SpecialistEncoder(config.encoder_source, num_threads=max(1, int(config.cpus_per_worker)),
                                cache_path=config.encoding_cache)
    summary: dict[str, dict[str, Any]] = {}
    for task, data in sorted(pairs.items()):
        if len(data.texts) != len(data.answers):
            raise ValueError(f"task {task!r}: {len(data.texts)} texts but {len(data.answers)} answers")
        started = time.perf_counter()
        Cs = config.task_Cs.get(task, config.Cs)
        params: dict[str, Any] = {} if data.kind == "cache" else {"Cs": Cs, "holdout": config.holdout, "seed": config.seed}
        head_kind: str = data.kind
        if task in config.finetune:
            if data.kind not in FINETUNED_HEAD:
                raise ValueError(f"task {task!r} has a {data.kind!r} head; only label and entity tasks can be "
                                 f"fine-tuned (SpecialistTrainingConfig.finetune names it)")
            head_kind = FINETUNED_HEAD[data.kind]
            params = {**config.finetune[task].model_dump(exclude_none=True), "holdout": config.holdout,
                      "seed": config.seed, "num_threads": max(1, int(config.cpus_per_worker))}
        elif data.kind == "label":
            params["lexical_features"] = config.lexical_features
        head = make_head(head_kind, encoder, **params).fit(data.texts, data.answers)
        if data.source is not None and data.kind == "cache":
            head.save(output_dir / task, source=data.source)
        elif config.keep_pairs:
            # The pairs travel with the head, so the loop can refit it on them plus what it mines.
            write_pairs(head.save(output_dir / task), data.texts, data.answers)
        else:
            head.save(output_dir / task)
        metrics: dict[str, float] = {"fit_seconds": time.perf_counter() - started}
        if head_kind in FINETUNED_HEAD.values():
            metrics.update({"epochs": head.epochs_, "train_seconds": head.train_seconds_,
                            **{f"holdout_at_epoch={e}": v for e, v in head.holdout_scores_.items()}})
        elif data.kind != "cache":
            metrics.update({"C": head.C_, **{f"holdout_at_C={c:g}": v for c, v in head.holdout_scores_.items()}})
        summary[task] = {
            "kind": data.kind,
            "n_examples": len(data.texts),
            "data_fingerprint": data_fingerprint(data.texts, data.answers),
            "metrics": metrics,
        }
    return summary


def _train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    import ray.train

    config = SpecialistTrainingConfig.model_validate(loop_config["config"])
    pairs = {task: TaskPairs.model_validate(p) for task, p in loop_config["pairs"].items()}
    with tempfile.TemporaryDirectory() as folder:
        summary = fit_heads(pairs, config, Path(folder))
        ray.train.report(
            {"tasks": len(summary)},
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"heads_{time.time_ns()}",
        )
    return summary


def distill_specialists(
    pairs: dict[str, TaskPairs],
    output_dir: str | Path,
    version: str,
    config: SpecialistTrainingConfig | None = None,
    storage_path: str | Path = "var/ray_train",
    run_name: str | None = None,
    carry_from: str | Path | None = None,
) -> Path:
    """Fit the heads in a Ray Train job and write the artifact ``output_dir`` (which must not exist yet).

    With ``carry_from`` (an artifact on the same encoder), its heads for tasks not in ``pairs``
    join the new artifact unchanged, manifest entries and all: a refit of some tasks is still a
    whole tier.

    Starts Ray (``ray.init()``) when it is not running yet; on a cluster, submit the command that
    calls this with ``ray job submit`` and the worker lands wherever a CPU is free.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not pairs:
        raise ValueError("distill_specialists needs pairs for at least one task, got none")
    config = config or SpecialistTrainingConfig()
    if config.encoding_cache is not None:  # the worker runs in another working directory
        config = config.model_copy(update={"encoding_cache": str(Path(config.encoding_cache).expanduser().resolve())})
    carried: dict[str, tuple[Path, HeadEntry]] = {}
    if carry_from is not None:
        base = read_manifest(carry_from)
        if base.encoder.source != config.encoder_source:
            raise ValueError(f"carry_from {str(carry_from)!r} sits on encoder {base.encoder.source!r}, "
                             f"not {config.encoder_source!r}: its heads cannot join this artifact")
        carried = {task: (Path(carry_from) / task, entry) for task, entry in base.tasks.items() if task not in pairs}
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "pairs": {task: p.model_dump(mode="json") for task, p in pairs.items()},
        },
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(
            storage_path=str(Path(storage_path).expanduser().resolve()), name=run_name or f"specialists-{version}"
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None or result.return_value is None:
        raise RouteNLPError(f"specialist distillation {version!r} ended without heads (run folder {result.path})")
    summary: dict[str, dict[str, Any]] = result.return_value
    with result.checkpoint.as_directory() as folder:
        heads = {
            task: (
                Path(folder) / task,
                HeadEntry(
                    kind=info["kind"],
                    files={},
                    data_fingerprint=info["data_fingerprint"],
                    n_examples=info["n_examples"],
                    metrics=info["metrics"],
                ),
            )
            for task, info in summary.items()
        }
        return write_artifact(output_dir, version, config.encoder_source, {**carried, **heads})
