"""The ``routenlp`` command.

Each command group is one module with a ``register(commands)`` function that adds its
subcommands (and their ``func``) to the top-level subparsers; this module only assembles them:

- ``serve``: ``check-config``, ``serve``, ``export-model``, ``log``
- ``record``: ``record``, ``distill-specialists``, ``distill-student``
- ``calibrate``: ``calibrate``, ``fit-scorer``, ``coverage``
- ``router``: ``train-router``
- ``loop``: ``loop run``, ``release``
- ``bench``: every ``bench ...`` benchmark (one module per family under ``bench/``)

Options that mirror a pydantic settings model's fields are derived from it
(``_options.ModelOptions``), so the flags and the configs cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from routenlp_ray._exceptions import RouteNLPError
from routenlp_ray.cli import bench, calibrate, loop, record, router, serve
from routenlp_ray.cli._common import CommandGroup, replaying_data_dir
from routenlp_ray.cli.bench._apps import serving_apps
from routenlp_ray.cli.serve import serve_executable

__all__ = [
    "GROUPS",
    "build_parser",
    "main",
    "replaying_data_dir",
    "serve_executable",
    "serving_apps",
]

# In the order ``routenlp --help`` lists their commands.
GROUPS: tuple[CommandGroup, ...] = (serve, record, calibrate, router, loop, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routenlp", description="RouteNLP on Ray: routing, benchmarks, logs.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RouteNLPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
