"""``routenlp bench ...``: each module adds its benchmarks to the ``bench`` subcommands."""

from __future__ import annotations

from routenlp_ray.cli._common import CommandGroup, Subparsers
from routenlp_ray.cli.bench import engines, loop, pilot, routing, serving

__all__ = ["GROUPS", "register"]

# In the order ``routenlp bench --help`` lists them.
GROUPS: tuple[CommandGroup, ...] = (routing, loop, engines, serving, pilot)


def register(commands: Subparsers) -> None:
    bench = commands.add_parser("bench", help="run a benchmark and write its results to a file")
    benches = bench.add_subparsers(dest="bench", required=True)
    for group in GROUPS:
        group.register(benches)
