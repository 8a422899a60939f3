"""The pilot's held-out slice: a fixed cut of validation, which ``eval_skip`` moves past rows read before.

A blind read of settings chosen on the default slice needs rows that slice never held; a resumed
run must not mix the figures of two slices.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.bench.pilot import PilotRunner, PilotSettings, eval_slice, eval_slice_key
from routenlp_ray.bench.pilot_plan import DriftPlan
from routenlp_ray.bench.pilot_report import pilot_markdown
from routenlp_ray.config import load_config
from tests.conftest import DATA_DIR, REPO_ROOT, require_data_dir

PLAN = DriftPlan.model_validate({"name": "tiny", "tasks": ["cs_intent", "fin_ner"], "drifts": []})


def _runner(tmp_path: Path, **settings: int) -> PilotRunner:
    require_data_dir()
    config = load_config(REPO_ROOT / "serve_config.local.yaml").with_absolute_paths(str(REPO_ROOT))
    return PilotRunner(config, PLAN, DATA_DIR, tmp_path / "work", PilotSettings(**{"eval_per_task": 100, **settings}),
                       log=lambda line: None)


def _ids(**settings: int) -> dict[str, set[str]]:
    require_data_dir()
    rows = eval_slice(DATA_DIR, PLAN.tasks, PilotSettings(**{"eval_per_task": 100, **settings}))
    return {t: {r.id for r in rows if r.task == t} for t in PLAN.tasks}


def test_skipping_past_the_default_slice_reads_only_rows_it_never_held() -> None:
    default, blind = _ids(), _ids(eval_skip=100)
    assert len(default["cs_intent"]) == len(blind["cs_intent"]) == 100
    assert not default["cs_intent"] & blind["cs_intent"]
    # The same fixed order: the skipped slice's rows are the next ones a larger default slice would take.
    assert blind["cs_intent"] <= _ids(eval_skip=0, eval_per_task=200)["cs_intent"]
    # fin_ner has 136 validation rows: 36 are left after the first 100, none after 200.
    assert len(blind["fin_ner"]) == 36
    assert not _ids(eval_skip=200)["fin_ner"]
    with pytest.raises(ConfigError, match="eval_skip 5000 leaves no validation rows"):
        _ids(eval_skip=5000)


def test_a_resumed_week_read_on_another_slice_is_refused(tmp_path: Path) -> None:
    default, blind = _runner(tmp_path), _runner(tmp_path, eval_skip=100)
    assert default.eval_slice_key == eval_slice_key(default.eval_rows) != blind.eval_slice_key
    week = tmp_path / "week-00.json"
    week.write_text(json.dumps({"week": 0, "eval_slice": default.eval_slice_key}))
    assert default._resumed_week(week)["week"] == 0
    with pytest.raises(ConfigError, match="another held-out slice"):
        blind._resumed_week(week)
    week.write_text(json.dumps({"week": 0}))  # written before the key was kept: the default slice's
    assert default._resumed_week(week)["week"] == 0


def test_the_report_says_which_rows_the_held_out_figures_were_read_on() -> None:
    report = json.loads((REPO_ROOT / "results" / "pilot.json").read_text())
    assert "The held-out slice" not in pilot_markdown(report, "(test)")  # made before the slice was kept
    report["eval_slice"] = {"key": "abc", "skip": 200, "rows_per_task": {"cs_intent": 200, "fin_ner": 0}}
    markdown = pilot_markdown(report, "(test)")
    assert "The held-out slice: cs_intent 200 validation rows, after passing over the first 200" in markdown
    assert "Not in it, no validation rows left: fin_ner." in markdown
