"""Options derived from pydantic fields (``routenlp_ray.cli._options``), and the commands that use them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from routenlp_ray import cli
from routenlp_ray.bench.loop_experiment import LoopExperimentSettings
from routenlp_ray.bench.pilot import PilotSettings
from routenlp_ray.cli._options import ModelOptions, field_argument
from routenlp_ray.loop.iteration import LoopSettings


class Sample(BaseModel):
    count: int = Field(3, description="How many; 95% of the time.")
    share: float | None = None
    name: str = "x"
    names: list[str] = Field(default_factory=lambda: ["a", "b"])
    seeds: list[int] | None = None
    mode: Literal["fast", "slow"] = "fast"
    modes: list[Literal["fast", "slow"]] = Field(default_factory=lambda: ["slow"])
    level: Literal[1, 2] = 1
    needed: int
    nested: dict[str, int] = Field(default_factory=dict)


@pytest.mark.parametrize(("name", "expected"), [
    ("count", {"type": int, "default": 3, "help": "How many; 95%% of the time."}),
    ("share", {"type": float, "default": None}),
    ("name", {"default": "x"}),
    ("names", {"nargs": "+", "default": ["a", "b"]}),
    ("seeds", {"nargs": "+", "type": int, "default": None}),
    ("mode", {"choices": ["fast", "slow"], "default": "fast"}),
    ("modes", {"nargs": "+", "choices": ["fast", "slow"], "default": ["slow"]}),
    ("level", {"choices": [1, 2], "type": int, "default": 1}),
    ("needed", {"type": int, "required": True}),
])
def test_a_field_becomes_add_argument_keywords(name: str, expected: dict[str, Any]) -> None:
    assert field_argument(Sample, name) == expected


def test_a_default_factory_gives_each_parser_its_own_list() -> None:
    assert field_argument(Sample, "names")["default"] is not field_argument(Sample, "names")["default"]


def test_an_override_option_defaults_to_none() -> None:
    assert field_argument(Sample, "count", overrides=True)["default"] is None
    assert "required" not in field_argument(Sample, "needed", overrides=True)


def test_a_field_without_an_option_type_or_name_fails_naming_it() -> None:
    with pytest.raises(TypeError, match="Sample.nested"):
        field_argument(Sample, "nested")
    with pytest.raises(KeyError, match="no field 'absent'"):
        field_argument(Sample, "absent")


def _parse(options: ModelOptions, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_to(parser)
    return parser.parse_args(argv)


def test_flags_dests_and_values_round_trip_into_the_model() -> None:
    options = ModelOptions(Sample, ["count", "names", "mode"], flags={"names": "--tags"}, extra={"count": {"choices": [3, 4]}})
    args = _parse(options, ["--count", "4", "--tags", "p", "q", "--mode", "slow"])
    assert (args.count, args.tags, args.mode) == (4, ["p", "q"], "slow")
    assert Sample(needed=0, **options.values(args)).model_dump(include={"count", "names", "mode"}) == {
        "count": 4, "names": ["p", "q"], "mode": "slow"}
    with pytest.raises(SystemExit):
        _parse(options, ["--count", "5"])  # extra choices


def test_override_values_leave_out_the_options_not_given() -> None:
    options = ModelOptions(Sample, ["count", "share"], overrides=True)
    assert options.values(_parse(options, ["--share", "0.5"])) == {"share": 0.5}


def _args(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_bench_pilot_without_options_is_the_settings_defaults() -> None:
    from routenlp_ray.cli.bench.pilot import LIVE_FIELDS, PILOT_FIELDS, _pilot_options

    pilot = _pilot_options(PILOT_FIELDS).values(_args(["bench", "pilot"]))
    assert PilotSettings(**pilot) == PilotSettings()
    live = _pilot_options(LIVE_FIELDS).values(_args(["bench", "pilot-live", "--address", "h:1"]))
    assert PilotSettings(**live) == PilotSettings()
    given = _pilot_options(PILOT_FIELDS).values(_args(["bench", "pilot", "--queries", "7", "--budget", "9",
                                                        "--arms", "targeted_cost"]))
    assert (given["queries_per_week"], given["budget_examples"], given["arms"]) == (7, 9, ["targeted_cost"])


def test_bench_loop_without_options_is_the_settings_defaults() -> None:
    from routenlp_ray.cli.bench.loop import _experiment_options
    from routenlp_ray.loop.distill import DistillConfig

    values = _experiment_options().values(_args(["bench", "loop"]))
    assert LoopExperimentSettings(tasks=["t"], distill=DistillConfig(), **values) == LoopExperimentSettings(
        tasks=["t"], distill=DistillConfig())
    assert _experiment_options().values(_args(["bench", "loop", "--clusters", "5"]))["n_clusters"] == 5


class _Capture:
    """Stands in for Iteration: keeps the settings it was built with."""

    settings: list[LoopSettings] = []

    def __init__(self, config: Any, settings: LoopSettings, *args: Any) -> None:
        _Capture.settings.append(settings)
        self.workdir, self.run_id = Path(args[2]), args[3]

    def run(self, publish: bool = True) -> Any:
        from routenlp_ray.loop.iteration import IterationResult

        folder = self.workdir / self.run_id
        folder.mkdir(parents=True)
        (folder / "report.md").write_text("# report\n")
        return IterationResult(self.run_id, None, True, [], str(folder / "report.json"), {})


def test_loop_run_options_given_override_the_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           replay_file: Path) -> None:
    import yaml

    import routenlp_ray.loop.iteration as iteration_module
    from tests.conftest import small_config_dict

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_config_dict(tmp_path, replay_file)))
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"budget_examples": 11, "top_clusters": 2, "eval_per_task": 8}))
    monkeypatch.setattr(iteration_module, "Iteration", _Capture)
    _Capture.settings = []
    code = cli.main(["loop", "run", "--config", str(config), "--settings", str(settings), "--workdir",
                     str(tmp_path / "runs"), "--run-id", "r", "--budget", "5", "--tasks", "a", "b", "--steps", "3"])
    assert code == 0
    (got,) = _Capture.settings
    assert (got.budget_examples, got.eval_tasks, got.distill.max_steps) == (5, ["a", "b"], 3)  # given
    assert (got.top_clusters, got.eval_per_task, got.since) == (2, 8, None)  # the file's, and the model's
