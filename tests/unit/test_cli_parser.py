"""The ``routenlp`` parser: every command path keeps its options, defaults and required flags.

``cli_parser_expected.json`` was dumped from the single-module parser before the CLI became a
package of command groups; a flag renamed, dropped, retyped or given another default fails here.
Help texts are not compared (the options derived from config fields take the fields' descriptions).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray import cli
from routenlp_ray.cli import bench
from routenlp_ray.models.export import default_cache_dir

EXPECTED = Path(__file__).with_name("cli_parser_expected.json")


def _describe(action: argparse.Action) -> dict[str, Any]:
    """What an option means to a command line, help left out; unset attributes are dropped."""
    described = {
        "action": type(action).__name__,
        "choices": list(action.choices) if action.choices is not None else None,
        "const": action.const,
        "default": action.default,
        "dest": action.dest,
        "metavar": action.metavar,
        "nargs": action.nargs,
        "required": action.required,
        "type": getattr(action.type, "__name__", None if action.type is None else repr(action.type)),
    }
    # Environment-dependent defaults, by name.
    if action.default == os.environ.get("ROUTENLP_DATA", "../shared/data"):
        described["default"] = "$DEFAULT_DATA_DIR"
    if action.default == str(default_cache_dir() / "models" / "smollm2-135m-instruct"):
        described["default"] = "$EXPORT_MODEL_OUT"
    unset = [("required", False), ("action", "_StoreAction")]
    return {k: v for k, v in described.items() if v is not None and (k, v) not in unset}


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``"bench loop"`` -> its options (by their flags, or dest for a positional) and its subcommands."""
    entry: dict[str, Any] = {"options": {}}
    paths = {" ".join(path): entry}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            entry["subcommands"] = {"dest": action.dest, "required": action.required, "names": sorted(action.choices)}
            for name, sub in action.choices.items():
                paths.update(command_paths(sub, (*path, name)))
        elif not isinstance(action, argparse._HelpAction):
            entry["options"][" ".join(sorted(action.option_strings)) or action.dest] = _describe(action)
    entry["func"] = parser.get_default("func")
    return paths


@pytest.fixture(scope="module")
def paths() -> dict[str, dict[str, Any]]:
    return command_paths(cli.build_parser())


def test_every_command_path_has_its_options_and_defaults(paths: dict[str, dict[str, Any]]) -> None:
    expected = json.loads(EXPECTED.read_text())
    assert sorted(paths) == sorted(expected)
    for path, entry in expected.items():
        got = {k: v for k, v in paths[path].items() if k != "func"}
        # JSON has lists where argparse may hold tuples.
        assert json.loads(json.dumps(got)) == entry, path


def test_every_leaf_command_has_a_function(paths: dict[str, dict[str, Any]]) -> None:
    leaves = {p: e for p, e in paths.items() if "subcommands" not in e}
    assert len(leaves) == 27
    assert all(callable(e["func"]) for e in leaves.values()), [p for p, e in leaves.items() if not e["func"]]


def test_help_exits_0_and_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("check-config", "serve", "export-model", "log", "record", "distill-specialists",
                    "distill-student", "calibrate", "fit-scorer", "coverage", "train-router", "loop", "release", "bench"):
        assert command in out


def test_every_command_path_prints_its_help(paths: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    # A description with a bare % would break argparse's help formatting.
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*path.split(), "--help"])
        assert exit_.value.code == 0, path
        assert capsys.readouterr().out.startswith(f"usage: routenlp {path}".rstrip()), path


def test_no_command_is_an_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2


def _registered(group: Any) -> list[str]:
    commands = argparse.ArgumentParser().add_subparsers()
    group.register(commands)
    return list(commands.choices)


@pytest.mark.parametrize(("group", "commands"), [
    (cli.serve, ["check-config", "serve", "export-model", "log"]),
    (cli.record, ["record", "distill-specialists", "distill-student"]),
    (cli.calibrate, ["calibrate", "fit-scorer", "coverage"]),
    (cli.router, ["train-router"]),
    (cli.loop, ["loop", "release"]),
    (cli.bench, ["bench"]),
    (bench.routing, ["routing", "router-latency", "tasks"]),
    (bench.loop, ["loop", "loop-specialist"]),
    (bench.engines, ["specialist", "streaming", "gpu-smoke", "llm-tiers"]),
    (bench.serving, ["load", "soak", "serving"]),
    (bench.pilot, ["pilot", "pilot-live"]),
])
def test_each_group_registers_its_commands(group: Any, commands: list[str]) -> None:
    assert _registered(group) == commands


def test_the_groups_together_are_the_whole_command() -> None:
    top = [name for group in cli.GROUPS for name in _registered(group)]
    assert len(top) == len(set(top)) == 14
    benches = [name for group in bench.GROUPS for name in _registered(group)]
    assert len(benches) == len(set(benches)) == 14


def test_what_other_code_imports_from_the_cli_is_there() -> None:
    # tests/, benchmarks/ and the console script (routenlp_ray.cli:main) import these.
    from routenlp_ray.cli import build_parser, main, replaying_data_dir, serve_executable, serving_apps

    assert all(callable(f) for f in (build_parser, main, replaying_data_dir, serve_executable, serving_apps))
