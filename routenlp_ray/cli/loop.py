"""``loop run`` and ``release``: one iteration of the closed loop, and the releases it publishes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.cli._common import DEFAULT_DATA_DIR, DEFAULT_LOCAL_CONFIG, Subparsers
from routenlp_ray.cli._options import ModelOptions


def _loop_options() -> ModelOptions:
    """The ``loop run`` options that override the same ``LoopSettings`` fields of ``--settings``."""
    from routenlp_ray.loop.iteration import LoopSettings

    return ModelOptions(
        LoopSettings, ["budget_examples", "eval_per_task", "eval_tasks", "top_clusters", "since"],
        flags={"budget_examples": "--budget", "eval_tasks": "--tasks"}, overrides=True,
    )


def _cmd_loop_run(args: argparse.Namespace) -> int:
    import yaml

    from routenlp_ray.config import load_config
    from routenlp_ray.loop.iteration import Iteration, LoopSettings

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    settings_data = yaml.safe_load(Path(args.settings).read_text()) if args.settings else {}
    settings_data.update(_loop_options().values(args))  # the options given override the file
    if args.steps is not None:
        settings_data.setdefault("distill", {})["max_steps"] = args.steps
    try:
        settings = LoopSettings.model_validate(settings_data)
    except Exception as exc:
        raise ConfigError(f"invalid loop settings: {exc}") from None
    run_id = args.run_id or datetime_run_id()
    tiers = args.student_tier or [settings.student_tier]
    status = 0
    for tier in tiers:
        # Built only now: an iteration starts from the release the one before it published.
        iteration = Iteration(config, settings.model_copy(update={"student_tier": tier}),
                              args.log_uri or config.storage.log_uri, args.data_dir, args.workdir,
                              run_id if len(tiers) == 1 else f"{run_id}-{tier}")
        result = iteration.run(publish=not args.no_publish)
        print(Path(result.report_path).with_suffix(".md").read_text())
        print(f"report: {result.report_path}")
        if not result.gate_passed:
            print(f"{iteration.student.name}: gate failed, nothing was published")
            status = 2
            continue
        print(f"published: {result.published}" if result.published else "not published (no releases.path or --no-publish)")
    return status


def datetime_run_id() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _release_store(args: argparse.Namespace) -> Any:
    from routenlp_ray.config import load_config
    from routenlp_ray.releases import ReleaseStore

    path = args.path or load_config(args.config).with_absolute_paths(os.getcwd()).releases.path
    if not path:
        raise ConfigError("no release store: pass --path or set releases.path in the config")
    return ReleaseStore(path)


def _cmd_release(args: argparse.Namespace) -> int:
    store = _release_store(args)
    if args.action == "list":
        current = store.current_version()
        for version in store.versions():
            print(("* " if version == current else "  ") + version)
        return 0
    if args.action == "current":
        print(store.current_version() or "none")
        return 0
    if args.action == "rollback":
        release = store.rollback()
    else:
        if not args.version:
            raise ConfigError("release activate needs a VERSION")
        release = store.activate(args.version)
    print(f"current release: {release.version}; running replicas switch within releases.poll_interval_s")
    return 0


def register(commands: Subparsers) -> None:
    loop = commands.add_parser("loop", help="the closed loop: mine, distil, evaluate, gate, publish")
    loop_commands = loop.add_subparsers(dest="loop_command", required=True)
    loop_run = loop_commands.add_parser("run", help="run one loop iteration (the `ray job submit` entrypoint)")
    loop_run.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    loop_run.add_argument("--settings", default=None, help="YAML of LoopSettings (budget, distill, gate ...)")
    loop_run.add_argument("--log-uri", default=None, help="query log to mine (default: the config's)")
    loop_run.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="held-out evaluation data")
    loop_run.add_argument("--workdir", default="var/loop", help="run folders (stages, adapters, reports)")
    loop_run.add_argument("--run-id", default=None, help="same id = resume that run (default: UTC time)")
    loop_run.add_argument("--student-tier", nargs="+", default=None,
                          help="cheap tier(s) to distil into, transformers or specialist (default: the settings'); "
                               "with several, one iteration per tier in turn, each from the release the last published")
    _loop_options().add_to(loop_run)
    loop_run.add_argument("--steps", type=int, default=None, help="LoRA optimizer steps per student")
    loop_run.add_argument("--no-publish", action="store_true", help="evaluate and gate, but publish nothing")
    loop_run.set_defaults(func=_cmd_loop_run)

    release = commands.add_parser("release", help="list, inspect or roll back loop releases")
    release.add_argument("action", choices=["list", "current", "rollback", "activate"])
    release.add_argument("version", nargs="?", default=None, help="for activate")
    release.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    release.add_argument("--path", default=None, help="release store (default: the config's releases.path)")
    release.set_defaults(func=_cmd_release)
