"""``bench loop`` and ``bench loop-specialist``: the closed loop measured, targeted against untargeted."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.cli._common import (
    DEFAULT_DATA_DIR,
    DEFAULT_LOCAL_CONFIG,
    Subparsers,
    add_records_arguments,
    benchmark_tasks,
    tasks_with_split,
)
from routenlp_ray.cli._options import ModelOptions


def _experiment_options() -> ModelOptions:
    """The ``bench loop`` options that are ``LoopExperimentSettings`` fields (the distillation ones are not)."""
    from routenlp_ray.bench.loop_experiment import LoopExperimentSettings

    return ModelOptions(
        LoopExperimentSettings,
        ["traffic_per_task", "seeds", "curve_seeds", "student_tier", "specialist_base_share", "budget",
         "n_clusters", "top_cost_shares", "eval_per_task", "bootstrap", "gate_tolerance", "calibration",
         "gate_cost_tolerance", "iterations", "rehearsal_share"],
        flags={"n_clusters": "--clusters"}, extra={"iterations": {"choices": [1, 2]}},
    )


def _with_engine_threads(config: Any, threads: int) -> Any:
    """The student tiers (transformers, specialist) run ``threads`` torch threads while the loop reads them."""
    tiers = [t.model_copy(update={"engine": t.engine.model_copy(update={"num_threads": threads})})
             if t.engine.type in ("transformers", "specialist") else t for t in config.tiers]
    return config.model_copy(update={"tiers": tiers})


def _cmd_bench_loop(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.loop_experiment import LoopExperimentSettings, run_loop_experiment
    from routenlp_ray.bench.loop_experiment_report import write_loop_experiment_report
    from routenlp_ray.config import load_config
    from routenlp_ray.loop.distill import DistillConfig

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    run_dir = Path(args.workdir) / args.run_id
    storage = config.storage.model_copy(update={"log_uri": str((run_dir / "querylog").resolve()),
                                                "spool_dir": str((run_dir / "spool").resolve())})
    # The experiment starts from the configured adapter and publishes only into its own store.
    releases = config.releases.model_copy(update={"path": None})
    config = config.model_copy(update={"storage": storage, "releases": releases})
    if args.student_threads is not None:
        config = _with_engine_threads(config, args.student_threads)
    settings = LoopExperimentSettings(
        **_experiment_options().values(args),
        tasks=tasks_with_split(benchmark_tasks(args, config), args.data_dir, "train"),
        specialist={"cpus_per_worker": args.cpus_per_worker},
        distill=DistillConfig(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              max_seq_len=384, checkpoint_every=max(1, args.steps // 2),
                              cpus_per_worker=args.cpus_per_worker),
    )
    report = run_loop_experiment(config, args.data_dir, args.workdir, args.run_id, settings,
                                 log=lambda line: print(line, flush=True))
    print(write_loop_experiment_report(report, args.out).read_text())
    return 0


def _cmd_bench_loop_specialist(args: argparse.Namespace) -> int:
    import torch

    from routenlp_ray.bench.loop_specialist import CachedEncoder, LoopSpecialistSettings, run_loop_specialist
    from routenlp_ray.bench.loop_specialist_report import write_loop_specialist_report
    from routenlp_ray.config import load_config
    from routenlp_ray.models.encoder import MINILM_SOURCE

    if args.headline_fraction not in args.fractions:
        raise ConfigError(f"--headline-fraction {args.headline_fraction} must be one of --fractions {args.fractions}")
    # On a shared CPU, more threads than cores spin instead of working: one thread, one text at a time.
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    settings = LoopSpecialistSettings(
        tasks=args.tasks, seeds=list(range(args.seeds)), pool_per_task=args.pool_per_task,
        validation_per_task=args.validation_per_task,
        min_traffic=args.min_traffic, n_clusters=args.clusters, fractions=args.fractions, bootstrap=args.bootstrap,
        headline_fraction=args.headline_fraction,
    )
    cascade = config.cascade
    report = run_loop_specialist(
        {t: config.task(t) for t in args.tasks}, args.data_dir, settings,
        lambda tier, p, c: config.tier(tier).pricing.cost_usd(p, c),
        CachedEncoder(MINILM_SOURCE, num_threads=args.threads),
        {t: cascade.uncertainty_per_task.get(t, cascade.uncertainty) for t in args.tasks},
        log=lambda line: print(line, flush=True),
    )
    print(write_loop_specialist_report(report, args.out).read_text())
    return 0


def register(benches: Subparsers) -> None:
    loop_bench = benches.add_parser("loop", help="one real loop iteration: traffic, mining, distillation, evaluation")
    add_records_arguments(loop_bench)
    loop_bench.add_argument("--workdir", default="var/loop-bench")
    loop_bench.add_argument("--run-id", default="bench")
    _experiment_options().add_to(loop_bench)
    loop_bench.add_argument("--steps", type=int, default=20, help="LoRA steps per student (the same for every budget)")
    loop_bench.add_argument("--batch-size", type=int, default=8)
    loop_bench.add_argument("--learning-rate", type=float, default=1e-3)
    loop_bench.add_argument("--cpus-per-worker", type=float, default=1.0, help="also the torch threads of the worker")
    loop_bench.add_argument("--student-threads", type=int, default=None,
                            help="torch threads of the transformers tiers while students are evaluated")
    loop_bench.add_argument("--out", default="results/loop_iteration.json")
    loop_bench.set_defaults(func=_cmd_bench_loop)
    loop_spec = benches.add_parser(
        "loop-specialist", help="targeted vs untargeted distillation into the specialist tier, offline, over seeds"
    )
    loop_spec.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    loop_spec.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    loop_spec.add_argument("--tasks", nargs="+",
                           default=["cs_intent", "cs_response", "fin_ner", "legal_clause", "legal_risk"])
    loop_spec.add_argument("--seeds", type=int, default=5)
    loop_spec.add_argument("--pool-per-task", type=int, default=800, help="train rows drawn per task")
    loop_spec.add_argument("--validation-per-task", type=int, default=400, help="validation rows drawn per task")
    loop_spec.add_argument("--min-traffic", type=int, default=300, help="fewest traffic queries a task may get")
    loop_spec.add_argument("--clusters", type=int, default=16)
    loop_spec.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                           help="budget sizes: share of failure cost the targeted clusters cover")
    loop_spec.add_argument("--headline-fraction", type=float, default=0.5)
    loop_spec.add_argument("--bootstrap", type=int, default=1000)
    loop_spec.add_argument("--threads", type=int, default=1)
    loop_spec.add_argument("--out", default="results/loop_specialist.json")
    loop_spec.set_defaults(func=_cmd_bench_loop_specialist)
