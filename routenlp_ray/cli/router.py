"""``train-router``: the difficulty-aware start-tier router, from records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from routenlp_ray.cli._common import Subparsers, add_records_arguments, benchmark_tasks


def _cmd_train_router(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.routing.training import train_router_policy

    config = load_config(args.config)
    tasks = benchmark_tasks(args, config)
    policy, report = train_router_policy(config, args.records, args.data_dir, tasks, split=args.split,
                                         seed=args.seed, epochs=args.epochs, version=args.version)
    folder = policy.save(Path(args.out) / policy.version, metadata=report)
    print(json.dumps(report, indent=2))
    print(f"saved {folder}; serve it with cascade.start_policy: router and cascade.router_path: {folder}")
    return 0


def register(commands: Subparsers) -> None:
    train = commands.add_parser("train-router", help="train the difficulty-aware router from records")
    add_records_arguments(train, epochs=150)
    train.add_argument("--version", default=None, help="artifact version (default: router-<UTC time>)")
    train.add_argument("--out", default="var/artifacts/router")
    train.set_defaults(func=_cmd_train_router)
