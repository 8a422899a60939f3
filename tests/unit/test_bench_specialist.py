"""`routenlp bench specialist --artifacts A --variants ...`: one artifact under two engine settings, side by side.

The real engine on the real shipped heads and shared data (a few queries per task, one round):
accuracy per task comes from the task's own metric, the columns line up, and the report is written.
Eager one text at a time, and traced on two threads, give the same embeddings bit for bit, so both
runs answer alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray.cli import main
from tests.conftest import DATA_DIR, REPO_ROOT, require_data_dir

ARTIFACT = REPO_ROOT / "artifacts" / "specialists" / "embedded-v3"


def test_engine_variants_are_measured_on_the_same_queries_and_written_side_by_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    require_data_dir()
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "compare.json"
    code = main(["bench", "specialist", "--data-dir", str(DATA_DIR), "--per-task", "4", "--rounds", "1",
                 "--artifacts", str(ARTIFACT), "--variants", "trace=false", "encode_workers=2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    first, second = report["artifacts"]
    assert report["queries"] == 4 * len(first["tasks"]) and first["tasks"] == second["tasks"]
    assert "fin_ner" in first["tasks"] and first["artifact"] == second["artifact"] == "embedded-v3"
    assert (first["encoder_traced"], second["encoder_traced"]) == (False, True)
    assert (first["encoder_workers"], second["encoder_workers"]) == (1, 2)
    # The same heads on the same embeddings give the same answers, so the same accuracy.
    assert first["accuracy_per_task"] == second["accuracy_per_task"]
    assert all(0.0 <= a <= 1.0 for a in first["accuracy_per_task"].values())
    assert len(first["batched_answers_per_s"]["rounds"]) == 1 and first["single_client_ms"]["p50"] > 0
    markdown = out.with_suffix(".md").read_text()
    assert "| fin_ner accuracy |" in markdown and "embedded-v3, trace=False | embedded-v3, encode_workers=2 |" in markdown
    assert "command" in report and "wrote" in capsys.readouterr().out
