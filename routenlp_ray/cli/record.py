"""``record``, ``distill-specialists`` and ``distill-student``: tier outputs on a data split, and students from them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.cli._common import (
    DEFAULT_DATA_DIR,
    DEFAULT_LOCAL_CONFIG,
    Subparsers,
    benchmark_tasks,
    replaying_data_dir,
    task_counts,
)
from routenlp_ray.recording.recorder import DEFAULT_RECORD_MAX_TOKENS


def _cmd_record(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.recording import Recorder
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    max_tokens = {**DEFAULT_RECORD_MAX_TOKENS, **task_counts(args.max_tokens, "--max-tokens")}
    recorder = Recorder(config, args.out, batch_size=args.batch_size, max_tokens=max_tokens)
    tasks = benchmark_tasks(args, config)
    for task in tasks:
        examples = load_examples(config.task(task).data_file(args.data_dir, args.split), limit=args.limit, seed=args.seed)
        added = recorder.record(task, args.split, examples, tiers=args.tiers)
        print(f"{task}/{args.split}: {len(examples)} examples, new records per tier: {added}", flush=True)
    return 0


def _cmd_distill_specialists(args: argparse.Namespace) -> int:
    """Ask the frontier tier for its answers on a data split, and distil them into specialist heads."""
    from routenlp_ray.config import load_config
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.teacher import frontier_pairs
    from routenlp_ray.specialists.training import (
        FineTuneSettings,
        SpecialistTrainingConfig,
        distill_specialists,
        head_kind_for_parser,
    )
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    teacher = make_engine(config.frontier)
    tasks = args.tasks or (config.tier(args.tier).tasks if args.tier else None) or benchmark_tasks(args, config)
    pairs = {}
    for name in tasks:
        task = config.task(name)
        kind = head_kind_for_parser(task.parser)
        examples = load_examples(task.data_file(args.data_dir, args.split), limit=args.limit, seed=args.seed)
        pairs[name], missing = frontier_pairs(teacher, task, kind, [e.input for e in examples])
        if kind == "cache" and args.cache_rows_from_data:
            pairs[name] = _pairs_referencing_rows(args, name, pairs[name])
        print(f"{name}: {len(pairs[name].texts)} pairs from {config.frontier.name!r} ({missing} without an answer), "
              f"{kind} head", flush=True)
    epochs = task_counts(args.finetune, "--finetune")
    unknown = sorted(set(epochs) - set(pairs))
    if unknown:
        raise ConfigError(f"--finetune names {unknown}, which are not among the tasks distilled ({sorted(pairs)})")
    chosen = {"trained_layers": args.trained_layers, "learning_rate": args.learning_rate,
              "head_learning_rate": args.head_learning_rate, "quantize": args.quantize or None}
    finetune = {task: FineTuneSettings(epochs=n, **{k: v for k, v in chosen.items() if v is not None})
                for task, n in epochs.items()}
    training = SpecialistTrainingConfig(cpus_per_worker=args.cpus, seed=args.seed, finetune=finetune,
                                        keep_pairs=not args.no_pairs)
    out = distill_specialists(pairs, args.out, version=args.version or Path(args.out).name, config=training,
                              storage_path=args.storage, carry_from=args.carry_from)
    print(f"wrote specialist artifact {out}")
    return 0


def _cmd_distill_student(args: argparse.Namespace) -> int:
    """Ask the frontier for its answers on a data split, and distil them into a LoRA adapter for a tier."""
    from routenlp_ray.config import load_config
    from routenlp_ray.config.tiers import TransformersEngineConfig
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.distill import DistillConfig, train_lora_adapter
    from routenlp_ray.loop.teacher import frontier_examples
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    tier = config.tier(args.tier)
    if not isinstance(tier.engine, TransformersEngineConfig):
        raise ConfigError(f"--tier {args.tier!r} is a {tier.engine.type!r} tier; a LoRA student needs a transformers tier")
    base = tier.engine.model_copy(update={"adapter_path": None})
    limits = task_counts(args.limit_per_task, "--limit-per-task")
    teacher = make_engine(config.frontier)
    train, held_out, provenance = [], [], {}
    for name in args.tasks or benchmark_tasks(args, config):
        task = config.task(name)
        rows = load_examples(task.data_file(args.data_dir, args.split), limit=limits.get(name, args.limit) + args.holdout,
                             seed=args.seed)
        examples, missing = frontier_examples(teacher, task, [r.input for r in rows])
        held_out += examples[: args.holdout]
        train += examples[args.holdout :]
        provenance[name] = {"train": len(examples[args.holdout :]), "held_out": len(examples[: args.holdout]),
                            "without_answer": missing}
        print(f"{name}: {provenance[name]['train']} training and {provenance[name]['held_out']} held-out examples "
              f"from {config.frontier.name!r} ({missing} without an answer)", flush=True)
    distill = DistillConfig(
        max_steps=args.steps, batch_size=args.batch_size, max_seq_len=args.max_seq_len, learning_rate=args.lr,
        r=args.rank, alpha=2 * args.rank, eval_every=args.eval_every, patience=args.patience,
        checkpoint_every=args.eval_every, cpus_per_worker=args.cpus, seed=args.seed,
    )
    result = train_lora_adapter(base, train, distill, args.out, args.storage, args.run_name or Path(args.out).name,
                                eval_examples=held_out)
    (Path(args.out) / "student.json").write_text(json.dumps({
        "tier": args.tier, "data_dir": str(Path(args.data_dir)), "split": args.split, "seed": args.seed,
        "teacher": config.frontier.name, "tasks": provenance,
        "held_out_from": f"the same {args.split} split, disjoint from the training examples",
        "command": "routenlp " + " ".join(sys.argv[1:]),
    }, indent=2))
    best = dict(result.evaluations).get(result.best_step) if result.best_step is not None else None
    print(f"wrote LoRA adapter {args.out}: {result.steps} steps, kept step {result.best_step} "
          f"(held-out loss {best}, base {result.evaluations[0][1] if result.evaluations else None})"
          f"{', stopped early' if result.stopped_early else ''}")
    return 0


def _pairs_referencing_rows(args: argparse.Namespace, task: str, pairs: Any) -> Any:
    """The pairs in their data file's order, pointing at it, after checking they are exactly its rows."""
    from routenlp_ray.tasks.data import answer_text, load_examples, task_file

    rows = [(r.input, answer_text(r.reference)) for r in load_examples(task_file(args.data_dir, task, args.split))]
    if args.limit is not None or sorted(t for t, _ in rows) != sorted(pairs.texts):
        raise ConfigError(
            f"--cache-rows-from-data: the frontier did not answer exactly the queries of {task}/{args.split} "
            "(or --limit is set); drop the flag to store the cache's own copy"
        )
    # The file's references stand in for the frontier's answers; say where the two differ (the
    # replay frontier gives whitespace-equal queries one answer).
    answered = dict(zip(pairs.texts, pairs.answers))
    differ = sum(answered[t] != a for t, a in rows)
    print(f"{task}: caching the file's {len(rows)} rows; {differ} references differ from the frontier's answer")
    source = {"path": f"{task}/{args.split}.jsonl", "input_field": "input", "answer_field": "reference"}
    return pairs.model_copy(update={"texts": [t for t, _ in rows], "answers": [a for _, a in rows], "source": source})


def register(commands: Subparsers) -> None:
    record = commands.add_parser("record", help="run every tier over a data split once and keep the outputs")
    record.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    record.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    record.add_argument("--out", default="var/records", help="records folder (resumable)")
    record.add_argument("--tasks", nargs="+", default=None, help="default: the six benchmark tasks in the config")
    record.add_argument("--tiers", nargs="+", default=None, help="default: every tier")
    record.add_argument("--split", default="validation")
    record.add_argument("--limit", type=int, default=None, help="examples per task (a seeded sample)")
    record.add_argument("--seed", type=int, default=0)
    record.add_argument("--batch-size", type=int, default=8)
    record.add_argument("--max-tokens", nargs="*", metavar="TASK=N", help="override max tokens per task")
    record.set_defaults(func=_cmd_record)

    distill = commands.add_parser(
        "distill-specialists", help="distil the frontier's answers into specialist heads (a Ray Train job)"
    )
    distill.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    distill.add_argument("--tier", default=None, help="specialist tier whose `tasks` to distil (default: --tasks)")
    distill.add_argument("--tasks", nargs="+", default=None)
    distill.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    distill.add_argument("--split", default="train")
    distill.add_argument("--limit", type=int, default=None, help="queries per task (a seeded sample)")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--cpus", type=float, default=1.0, help="CPUs of the Ray Train worker")
    distill.add_argument("--out", required=True, help="new artifact folder, e.g. artifacts/specialists/v1")
    distill.add_argument("--version", default=None, help="artifact version (default: the folder name)")
    distill.add_argument("--storage", default="var/ray_train", help="Ray Train storage path")
    distill.add_argument("--cache-rows-from-data", action="store_true",
                         help="answer caches reference the data file their pairs are (no copy in the artifact)")
    distill.add_argument("--finetune", nargs="+", metavar="TASK=EPOCHS", default=None,
                         help="label or entity tasks that fine-tune the encoder's top layers for at most EPOCHS "
                              "(the best epoch on a held-out slice of the pairs is kept) instead of a frozen-feature head")
    distill.add_argument("--trained-layers", type=int, default=None,
                         help="top encoder layers each --finetune task trains, the rest being a shared frozen trunk "
                              "(default: FineTuneSettings', 2)")
    distill.add_argument("--learning-rate", type=float, default=None,
                         help="learning rate of the --finetune tasks' encoder layers (default: FineTuneSettings', 1e-4)")
    distill.add_argument("--head-learning-rate", type=float, default=None,
                         help="learning rate of the --finetune tasks' new classifiers (default: FineTuneSettings', 2e-3)")
    distill.add_argument("--quantize", action="store_true",
                         help="the --finetune tasks run their frozen trunk in int8 in training and serving, and their "
                              "top in int8 when serving (about 2.5x faster on CPU)")
    distill.add_argument("--no-pairs", action="store_true",
                         help="leave the training pairs out of the artifact (a loop refit asks the frontier again): "
                              "for an artifact committed where data must not be copied")
    distill.add_argument("--carry-from", default=None,
                         help="an artifact on the same encoder whose heads for the tasks not distilled join the new one")
    distill.set_defaults(func=_cmd_distill_specialists)

    student = commands.add_parser(
        "distill-student", help="distil the frontier's answers into a LoRA adapter for a transformers tier (Ray Train)"
    )
    student.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    student.add_argument("--tier", default="smollm2", help="transformers tier whose base model the adapter is for")
    student.add_argument("--tasks", nargs="+", default=None, help="default: the six benchmark tasks in the config")
    student.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    student.add_argument("--split", default="train")
    student.add_argument("--limit", type=int, default=200, help="training queries per task (a seeded sample)")
    student.add_argument("--limit-per-task", nargs="*", metavar="TASK=N", help="override --limit per task")
    student.add_argument("--holdout", type=int, default=10,
                         help="queries per task held out of the same split for early stopping (not trained on)")
    student.add_argument("--steps", type=int, default=300, help="most optimizer steps")
    student.add_argument("--batch-size", type=int, default=8)
    student.add_argument("--max-seq-len", type=int, default=384)
    student.add_argument("--lr", type=float, default=5e-4)
    student.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha is twice it)")
    student.add_argument("--eval-every", type=int, default=25, help="steps between held-out evaluations and checkpoints")
    student.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    student.add_argument("--cpus", type=float, default=1.0, help="CPUs (torch threads) of the Ray Train worker")
    student.add_argument("--seed", type=int, default=0)
    student.add_argument("--out", required=True, help="new adapter folder, e.g. artifacts/students/smollm2-v1")
    student.add_argument("--run-name", default=None, help="Ray Train run (same name = resume; default: --out's name)")
    student.add_argument("--storage", default="var/ray_train", help="Ray Train storage path")
    student.set_defaults(func=_cmd_distill_student)
