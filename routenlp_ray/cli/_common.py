"""What the command groups share: default paths, the record-reading options and the config helpers.

Each group module (``serve``, ``record``, ``calibrate``, ``router``, ``loop``, ``bench``) has one
``register(commands)`` function that adds its subcommands to the top-level subparsers; every
subcommand sets ``func``, which takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Protocol

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.recording.recorder import DEFAULT_RECORD_MAX_TOKENS

DEFAULT_LOCAL_CONFIG = "serve_config.local.yaml"
DEFAULT_DATA_DIR = os.environ.get("ROUTENLP_DATA", "../shared/data")

Subparsers = argparse._SubParsersAction  # what ``add_subparsers`` returns


class CommandGroup(Protocol):
    """A module of commands: it adds them, each with its ``func``, to the given subparsers."""

    def register(self, commands: Subparsers) -> None: ...


def replaying_data_dir(config: Any, data_dir: str) -> Any:
    """The config with every replay tier also reading ``data_dir``'s files.

    A replay tier stands in for the frontier by answering with recorded references; pointed at
    another folder of the same layout (``--data-dir DIR --split test``), it must know that
    folder's references too, or every query would miss.
    """
    pattern = str(Path(data_dir).expanduser().resolve() / "*" / "*.jsonl")
    data = config.model_dump(mode="json")
    for tier in data["tiers"]:
        if tier["engine"]["type"] == "replay" and pattern not in tier["engine"]["records"]:
            tier["engine"]["records"].append(pattern)
    return type(config).model_validate(data)


def benchmark_tasks(args: argparse.Namespace, config: Any) -> list[str]:
    """``--tasks`` if given, else the six benchmark tasks the config defines."""
    return args.tasks or [t.name for t in config.tasks if t.name in DEFAULT_RECORD_MAX_TOKENS]


def tasks_with_split(tasks: list[str], data_dir: str, split: str) -> list[str]:
    """The tasks whose data folder has this split (traffic comes from train; fin_summarization has none)."""
    return [task for task in tasks if (Path(data_dir) / task / f"{split}.jsonl").is_file()]


def task_counts(items: list[str] | None, option: str) -> dict[str, int]:
    """``TASK=N`` overrides as a mapping; a malformed one fails naming the option and the item."""
    counts = {}
    for item in items or []:
        task, _, value = item.partition("=")
        if not task or not value.isdigit():
            raise ConfigError(f"{option} takes TASK=N with N a whole number, got {item!r}")
        counts[task] = int(value)
    return counts


def add_records_arguments(parser: argparse.ArgumentParser, epochs: int | None = None, several: bool = False) -> None:
    """The options every command that reads recorded tier outputs shares.

    With ``several``, ``--records`` and ``--split`` take lists and every recorded combination is read.
    """
    parser.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    if several:
        parser.add_argument("--records", nargs="+", default=["var/records/embedded"], help="records folders")
    else:
        parser.add_argument("--records", default="var/records/embedded")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the six benchmark tasks in the config")
    if several:
        parser.add_argument("--split", nargs="+", default=["validation"])
    else:
        parser.add_argument("--split", default="validation")
    if epochs is not None:
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--epochs", type=int, default=epochs)
