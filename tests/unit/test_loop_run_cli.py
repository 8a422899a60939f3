"""`routenlp loop run --student-tier A B`: one iteration per tier, in turn, each built after the last published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from routenlp_ray import cli
from routenlp_ray.loop.iteration import IterationResult
from tests.conftest import small_config_dict


class RecordingIteration:
    """Stands in for Iteration (a unit test of the command's orchestration, not of the loop)."""

    built: list[dict[str, Any]] = []
    gates: dict[str, bool] = {}

    def __init__(self, config: Any, settings: Any, log_uri: str, data_dir: Any, workdir: Any, run_id: str) -> None:
        self.student = type("Tier", (), {"name": settings.student_tier})()
        self.run_id, self.workdir = run_id, Path(workdir)
        RecordingIteration.built.append({"tier": settings.student_tier, "run_id": run_id,
                                         "published_before": [b["run_id"] for b in RecordingIteration.built]})

    def run(self, publish: bool = True) -> IterationResult:
        folder = self.workdir / self.run_id
        folder.mkdir(parents=True)
        (folder / "report.md").write_text(f"# {self.run_id}\n")
        passed = RecordingIteration.gates[self.student.name]
        return IterationResult(self.run_id, f"loop-{self.run_id}" if passed else None, passed, [],
                               str(folder / "report.json"), {})


@pytest.fixture()
def config_file(tmp_path: Path, replay_file: Path) -> Path:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(small_config_dict(tmp_path, replay_file)))
    return path


def test_several_student_tiers_run_in_turn_with_their_own_run_ids(monkeypatch, tmp_path: Path, config_file: Path,
                                                                   capsys) -> None:
    import routenlp_ray.loop.iteration as iteration_module

    monkeypatch.setattr(iteration_module, "Iteration", RecordingIteration)
    RecordingIteration.built, RecordingIteration.gates = [], {"specialist": True, "small": False}
    code = cli.main(["loop", "run", "--config", str(config_file), "--workdir", str(tmp_path / "runs"),
                     "--run-id", "nightly", "--student-tier", "specialist", "small"])
    assert [(b["tier"], b["run_id"]) for b in RecordingIteration.built] == [
        ("specialist", "nightly-specialist"), ("small", "nightly-small")]
    # The second was built after the first ran, so it reads the release the first published.
    assert RecordingIteration.built[1]["published_before"] == ["nightly-specialist"]
    out = capsys.readouterr().out
    assert "published: loop-nightly-specialist" in out and "small: gate failed, nothing was published" in out
    assert code == 2  # one gate failed
