"""`routenlp bench loop` on a tiny slice: the properties its targeted-vs-untargeted claim depends on.

Real engines in process (the specialist, SmolLM2 with the shipped student, the replay frontier),
real Ray Train runs and real recordings; only the sizes are small. The specialist's thresholds are
set so low that it escalates every query, so the log has failures to mine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray.bench.loop_experiment import LoopExperimentSettings, run_loop_experiment
from routenlp_ray.bench.loop_experiment_report import write_loop_experiment_report
from routenlp_ray.config import parse_config
from routenlp_ray.releases import ReleaseStore
from tests.conftest import REPO_ROOT, tier_named
from tests.cpu.conftest import escalating_default

pytestmark = pytest.mark.slow

TASKS = ["cs_intent", "legal_risk"]


@pytest.fixture(scope="module")
def experiment(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("loop-experiment")
    data = escalating_default(tmp, data_dir, TASKS)
    tier_named(data, "smollm2")["limits"]["default_max_tokens"] = 8
    config = parse_config(data)
    settings = LoopExperimentSettings(
        tasks=TASKS, seeds=[0, 1], curve_seeds=[0], budget=3, top_cost_shares=[0.5, 1.0],
        traffic_per_task=5, n_clusters=2, eval_per_task=4, bootstrap=20, iterations=2, gate_tolerance=1.0,
        distill={"max_steps": 1, "batch_size": 2, "max_seq_len": 128, "checkpoint_every": 1},
    )
    report = run_loop_experiment(config, data_dir, tmp / "work", "tiny", settings, log=lambda line: None)
    markdown = write_loop_experiment_report(report, tmp / "loop.json", "routenlp bench loop (test)")
    return {"report": report, "runs": tmp / "work" / "tiny" / "runs", "markdown": markdown.read_text(), "tmp": tmp}


def stage(run: Path, name: str) -> dict[str, Any]:
    return json.loads((run / "stages" / f"{name}.json").read_text())


def test_targeted_examples_come_only_from_the_selected_clusters_and_untargeted_match_them(experiment) -> None:
    for run in ("b3-s0", "b3-s1", "b3-f100-s0"):
        mined = stage(experiment["runs"] / run, "mine")
        selected = {q for c in mined["clusters"] if c["cluster"] in mined["top_clusters"] for q in c["query_ids"]}
        sets = stage(experiment["runs"] / run, "training_sets")
        # A share of each set rehearses the pairs the shipped adapter was distilled on (they carry no
        # query id); the rest of the targeted set is mined from the selected clusters only.
        mined_part = [e for e in sets["targeted"] if "query_id" in e]
        assert sets["rehearsed"] == round(0.25 * sets["budget"]) and sets["rehearsal_pool"] > 0
        assert mined_part and len(mined_part) == sets["budget"] - sets["rehearsed"]
        assert {e["query_id"] for e in mined_part} <= selected
        assert sets["budget"] <= 3
        assert len(sets["untargeted"]) == len(sets["targeted"]) == sets["budget"]
        # The same steps for both students, each continuing the shipped adapter.
        trained = [stage(experiment["runs"] / run, f"train_{v}") for v in ("targeted", "untargeted")]
        assert [t["steps"] for t in trained] == [1, 1]
        assert {t["init_adapter"] for t in trained} == {str((REPO_ROOT / "artifacts/students/smollm2-v1").resolve())}


def test_the_report_has_seeds_a_paired_ci_a_budget_curve_and_start_shares(experiment) -> None:
    report = experiment["report"]
    head = report["headline"]
    assert [s["seed"] for s in head["seeds"]] == [0, 1]
    assert [p["top_cost_share"] for p in report["curve"]] == [0.5, 1.0] and len(report["curve"][1]["seeds"]) == 1
    assert len(head["bootstrap"]["difference_ci95"]) == 2
    for variant in ("base", "targeted", "untargeted"):
        shares = head["router"][variant]["start_share"]
        assert set(shares) == {"smollm2", "frontier"}
        assert sum(s["mean"] for s in shares.values()) == pytest.approx(1.0)
    for seed in head["seeds"]:
        assert seed["gain"]["targeted"] == pytest.approx(
            seed["cost_reduction"]["targeted"] - seed["cost_reduction"]["base"], abs=1e-9)
    # Both seeds read the same held-out queries: the current model's answers were recorded once.
    assert len(list((experiment["runs"] / "base-records").iterdir())) == 2  # the shipped adapter and release 1
    assert "## Budget curve" in experiment["markdown"] and "| 0 |" in experiment["markdown"]


def test_the_second_iteration_continues_from_the_first_ones_release(experiment) -> None:
    iterations = experiment["report"]["iterations"]
    store = ReleaseStore(experiment["tmp"] / "work" / "tiny" / "releases")
    assert iterations["first"]["published"] == iterations["release_1"] == "loop-b3-s0"
    second = iterations["second"]
    assert second["starts_from"] == {"release": "loop-b3-s0",
                                     "artifact": str(store.get("loop-b3-s0").adapter_for("smollm2"))}
    # Mined from the second traffic only, which the release served, and the first traffic's runs never saw it.
    assert second["queries_mined"] == 5 * len(TASKS)
    for run in ("b3-s0", "b3-f100-s0"):
        assert stage(experiment["runs"] / run, "mine")["n_queries"] == 5 * len(TASKS)
    assert second["published"] == "loop-iteration2-b3-s0" and store.current_version() == "loop-iteration2-b3-s0"
