"""`routenlp bench loop --student-tier specialist --specialist-base-share` on a tiny slice.

The experiment distils its own base specialist on a share of each train split, sends traffic only
from the rest, and runs the real loop into the specialist tier: each student is the base heads
refitted on their pairs plus its own examples. Real engines, real Ray Train jobs; small sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray.bench.loop_experiment import LoopExperimentSettings, _base_rows, run_loop_experiment
from routenlp_ray.bench.loop_experiment_report import write_loop_experiment_report
from routenlp_ray.config import parse_config
from routenlp_ray.specialists import read_manifest
from routenlp_ray.specialists.artifact import read_pairs
from routenlp_ray.telemetry import read_records
from tests.cpu.conftest import escalating_default

pytestmark = pytest.mark.slow

TASKS = ["cs_intent", "legal_risk"]


@pytest.fixture(scope="module")
def experiment(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("loop-experiment-specialist")
    config = parse_config(escalating_default(tmp, data_dir, TASKS))
    settings = LoopExperimentSettings(
        tasks=TASKS, student_tier="specialist", specialist_base_share=0.02, specialist={"cpus_per_worker": 1},
        seeds=[0, 1], budget=4, top_cost_shares=[0.5], traffic_per_task=6, n_clusters=3, eval_per_task=6,
        bootstrap=20, gate_tolerance=1.0, distill={"max_steps": 1},
    )
    report = run_loop_experiment(config, data_dir, tmp / "work", "tiny", settings, log=lambda line: None)
    markdown = write_loop_experiment_report(report, tmp / "loop.json", "routenlp bench loop (test)")
    return {"report": report, "folder": tmp / "work" / "tiny", "markdown": markdown.read_text(),
            "settings": settings, "log": config.storage.log_uri, "data_dir": data_dir}


def stage(run: Path, name: str) -> dict[str, Any]:
    return json.loads((run / "stages" / f"{name}.json").read_text())


def test_the_base_specialist_never_saw_the_traffic(experiment) -> None:
    base_rows = _base_rows(experiment["settings"], experiment["data_dir"])
    artifact = experiment["folder"] / "base-specialist"
    assert experiment["report"]["starts_from"]["artifact"] == str(artifact.resolve())
    seen = set()
    for task in TASKS:
        texts, _ = read_pairs(artifact / task)
        assert texts == [r.input for r in base_rows[task]]
        seen |= set(texts)
    logged = [q["input"] for q in read_records(experiment["log"], "queries")]
    assert len(logged) == 6 * len(TASKS) and not seen & set(logged)


def test_each_specialist_student_is_the_base_refitted_on_its_own_equal_sized_set(experiment) -> None:
    artifact = experiment["folder"] / "base-specialist"
    for seed in (0, 1):
        run = experiment["folder"] / "runs" / f"b4-s{seed}"
        mined = stage(run, "mine")
        selected = {q for c in mined["clusters"] if c["cluster"] in mined["top_clusters"] for q in c["query_ids"]}
        sets = stage(run, "training_sets")
        assert sets["targeted"] and {e["query_id"] for e in sets["targeted"]} <= selected
        assert len(sets["untargeted"]) == len(sets["targeted"]) == sets["budget"] <= 4
        for variant in ("targeted", "untargeted"):
            trained = stage(run, f"train_{variant}")
            refit = Path(trained["artifact_dir"])
            assert set(read_manifest(refit).tasks) == set(TASKS)
            for task in TASKS:
                added = [e["input"] for e in sets[variant] if e["task"] == task]
                texts, _ = read_pairs(refit / task)
                assert texts == read_pairs(artifact / task)[0] + added


def test_the_report_reads_the_specialist_experiment(experiment) -> None:
    report = experiment["report"]
    assert report["student_kind"] == "specialist" and report["student_tier"] == "specialist"
    assert [s["seed"] for s in report["headline"]["seeds"]] == [0, 1]
    for variant in ("base", "targeted", "untargeted"):
        assert set(report["headline"]["router"][variant]["start_share"]) == {"specialist", "frontier"}
    assert "distillation into the specialist tier" in experiment["markdown"]
    assert "which no traffic query comes from" in experiment["markdown"]
