"""`routenlp bench pilot` writes its report through the shared writer: JSON stamped, Markdown, plot.

The pilot itself (hours of Ray Train work) is the collaborator replaced here: the committed
`results/pilot.json` stands in for a finished run. The pilot's own logic is tested in tests/cpu.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray.cli import main
from tests.conftest import DATA_DIR, REPO_ROOT, require_data_dir


def test_the_pilot_report_is_stamped_and_written_with_its_markdown_and_plot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_data_dir()
    finished = json.loads((REPO_ROOT / "results" / "pilot.json").read_text())
    for key in ("command", "created_at", "machine"):
        finished.pop(key, None)
    calls = []

    def finished_pilot(config, plan, data_dir, workdir, settings):
        calls.append((plan.name, settings.seeds, Path(workdir)))
        return finished

    monkeypatch.setattr("routenlp_ray.bench.pilot.run_pilot", finished_pilot)
    out = tmp_path / "results" / "pilot.json"
    assert main(["bench", "pilot", "--data-dir", str(DATA_DIR), "--seeds", "2", "--seed", "3",
                 "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert calls == [("default", [3, 4], tmp_path / "work")]
    written = json.loads(out.read_text())
    assert written["command"] and written["machine"]["cpus"] >= 1  # the command line of this process
    assert written["ratios"] == finished["ratios"]
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("# Pilot: default plan") and written["command"] in markdown
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_a_finished_pilots_markdown_and_plot_are_written_again_from_its_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished = tmp_path / "pilot.json"
    finished.write_text((REPO_ROOT / "results" / "pilot.json").read_text())
    before = finished.read_text()
    assert main(["bench", "pilot", "--render-from", str(finished)]) == 0
    markdown = finished.with_suffix(".md").read_text()
    assert json.loads(before)["command"] in markdown and "Where week 5's improvement comes from" in markdown
    assert finished.with_suffix(".png").stat().st_size > 10_000 and finished.read_text() == before
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "loop"}))
    assert main(["bench", "pilot", "--render-from", str(other)]) != 0
    assert "not a `bench pilot` report" in capsys.readouterr().err


def test_finished_pilots_of_two_budgets_are_compared_side_by_side(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished = json.loads((REPO_ROOT / "results" / "pilot_recalibration.json").read_text())
    paths = []
    for budget, scale, seeds in ((50, 0.5, [0, 1, 2]), (100, 1.0, [5, 7])):
        report = json.loads(json.dumps(finished))
        report["settings"]["budget_examples"] = budget
        report["settings"]["seeds"] = seeds
        report["ratios"]["targeted"]["final_week"]["ratio"] = 1.55 * scale
        paths.append(tmp_path / f"pilot_budget{budget}.json")
        paths[-1].write_text(json.dumps(report))
    out = tmp_path / "comparison.json"
    assert main(["bench", "pilot", "--compare", *map(str, paths), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["varied_settings"] == ["budget_examples", "seeds"]  # the arms and plan are the same
    assert [r["settings"] for r in written["rows"]] == [{"budget_examples": 50, "seeds": [0, 1, 2]},
                                                        {"budget_examples": 100, "seeds": [5, 7]}]
    markdown = out.with_suffix(".md").read_text()
    assert "varying budget_examples, seeds" in markdown
    for line in markdown.splitlines():  # every table's separator has one cell per column
        if line.startswith("|---"):
            header = markdown.splitlines()[markdown.splitlines().index(line) - 1]
            assert line == "|" + "---|" * (header.count(" | ") + 1), header
    # Consecutive seeds as a range, others listed.
    assert "| 50 | 0–2 | +3.9% | +2.5% | 0.78× |" in markdown and "| 100 | 5, 7 | +3.9% | +2.5% | 1.55× |" in markdown
    assert main(["bench", "pilot", "--compare", str(paths[0]), "--out", str(out)]) != 0
    assert "at least two finished pilots" in capsys.readouterr().err
    (tmp_path / "loop.json").write_text(json.dumps({"benchmark": "loop"}))
    assert main(["bench", "pilot", "--compare", str(paths[0]), str(tmp_path / "loop.json"), "--out", str(out)]) != 0
    assert "not a `bench pilot` report" in capsys.readouterr().err


def test_reread_reads_a_finished_runs_releases_instead_of_running_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_data_dir()
    finished = json.loads((REPO_ROOT / "results" / "pilot_blind_budget100.json").read_text())
    for key in ("command", "created_at", "machine"):
        finished.pop(key)
    calls = []

    def reread(config, plan, data_dir, workdir, settings):
        calls.append((Path(workdir), settings.eval_skip))
        return {**finished, "eval_slice": {**finished["eval_slice"], "reread_from": str(workdir)}}

    def run(*args):
        raise AssertionError("--reread must not run the pilot")

    monkeypatch.setattr("routenlp_ray.bench.pilot.reread_pilot", reread)
    monkeypatch.setattr("routenlp_ray.bench.pilot.run_pilot", run)
    out = tmp_path / "reread.json"
    assert main(["bench", "pilot", "--reread", "--data-dir", str(DATA_DIR), "--eval-skip", "400",
                 "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert calls == [(tmp_path / "work", 400)]
    assert "A re-read (`--reread`): the releases the run in" in out.with_suffix(".md").read_text()
    # Without --out a re-read writes next to the run's report, never over it.
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "pilot", "--reread", "--data-dir", str(DATA_DIR), "--eval-skip", "400",
                 "--config", str(REPO_ROOT / "serve_config.local.yaml"), "--workdir", str(tmp_path / "work")]) == 0
    assert (tmp_path / "results" / "pilot_reread.json").exists() and not (tmp_path / "results" / "pilot.json").exists()
