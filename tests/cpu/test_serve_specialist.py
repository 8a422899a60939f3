"""A specialist distilled in a Ray Train job, served on real Ray Serve, asked through the openai client.

Covers the specialist issue's must-shows: a sure cs_intent query is accepted by the specialist
and shows the saving; a forced-low threshold escalates it; an unserved task skips the tier at
no cost; a corrupt artifact published as a release is refused and the running version stays.
And the loop distils into it: an iteration mines the served log, refits the specialist on its
pairs plus the targeted failures' frontier answers, gates, publishes a release the tier swaps to
live, and a rollback swaps it back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from routenlp_ray.cascade import SKIP_UNSERVED
from routenlp_ray.cli import main
from routenlp_ray.config import parse_config
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.loop.iteration import Iteration, LoopSettings
from routenlp_ray.releases import ReleaseStore
from routenlp_ray.specialists import TaskPairs, distill_specialists, read_manifest, verify_artifact
from routenlp_ray.specialists.artifact import read_pairs
from routenlp_ray.tasks.data import load_examples, task_file
from tests.cpu.conftest import stages_with_a_quality_drop, wait_for

pytestmark = pytest.mark.slow

APP = "specialist"
TRAIN_PER_TASK = 600


def train_pairs(data_dir: Path) -> TaskPairs:
    examples = load_examples(task_file(data_dir, "cs_intent", "train"), limit=TRAIN_PER_TASK, seed=0)
    return TaskPairs(kind="label", texts=[e.input for e in examples], answers=[e.reference for e in examples])


@pytest.fixture(scope="module")
def app(serve_instance: int, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, Any]]:
    from ray import serve

    from deployments.builders import build_routenlp_app

    tmp = tmp_path_factory.mktemp("specialist")
    pairs = train_pairs(data_dir)
    artifact = distill_specialists({"cs_intent": pairs}, tmp / "artifacts" / "ci-v1", "ci-v1",
                                   storage_path=tmp / "ray_train")
    replay = [str(data_dir / "cs_intent" / s) for s in ("train.jsonl", "validation.jsonl")] + [
        str(data_dir / "legal_risk" / "validation.jsonl")]
    config = {
        "tiers": [
            {
                "name": "specialist",
                "engine": {"type": "specialist", "path": str(artifact)},
                "tasks": ["cs_intent"],
                "pricing": {"input_per_1m": 0.001, "output_per_1m": 0.001},
                "resources": {"num_cpus": 0.5},
            },
            {
                "name": "frontier",
                "engine": {"type": "replay", "records": replay},
                "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0},
                "resources": {"num_cpus": 0.25},
            },
        ],
        "tasks": [
            {"name": "chat", "metric": "none"},
            {"name": "cs_intent", "system_prompt": "Answer with the intent label only.", "metric": "macro_f1"},
            {"name": "legal_risk", "system_prompt": "Rate the unfairness.", "metric": "accuracy"},
        ],
        # Accept a label when the specialist gives it probability >= e^-0.5 (about 0.61).
        "cascade": {"thresholds": {"specialist": {"cs_intent": 0.5}}},
        "storage": {"log_uri": str(tmp / "log"), "spool_dir": str(tmp / "spool")},
        "releases": {"path": str(tmp / "releases"), "poll_interval_s": 0.5},
    }
    serve.run(build_routenlp_app(config), name=APP, route_prefix="/")
    yield {"port": serve_instance, "tmp": tmp, "artifact": artifact, "pairs": pairs, "config": config}
    serve.delete(APP)


@pytest.fixture()
def client(app: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{app['port']}/v1", api_key="unused", max_retries=0, timeout=60)


def tier_status() -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle("tier-specialist", app_name=APP).release_status.remote().result()


def health(app: dict[str, Any]) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{app['port']}/healthz", timeout=10).json()


def ask(client: OpenAI, task: str, text: str) -> tuple[str, dict[str, Any]]:
    response = client.chat.completions.create(
        model=f"routenlp/{task}", messages=[{"role": "user", "content": text}], max_tokens=16
    )
    return response.choices[0].message.content, response.model_extra["routing"]


def pairs_of(app: dict[str, Any]) -> TaskPairs:
    return app["pairs"]


def sure_query(app: dict[str, Any]) -> tuple[str, str]:
    """A training query, which the specialist has seen answered: it is sure of it."""
    pairs = app["pairs"]
    return pairs.texts[0], pairs.answers[0]


def test_training_ran_on_ray_train_and_wrote_a_checksummed_artifact(app: dict[str, Any]) -> None:
    manifest = read_manifest(app["artifact"])
    head = manifest.tasks["cs_intent"]
    assert manifest.version == "ci-v1" and head.kind == "label" and head.n_examples == TRAIN_PER_TASK
    # Weights and label map, word features, and the pairs it was fitted on (what a loop refit starts from).
    assert set(head.files) == {"head.json", "head.npz", "lexical.json", "pairs.jsonl"}
    assert read_pairs(Path(app["artifact"]) / "cs_intent") == (pairs_of(app).texts, pairs_of(app).answers)
    assert any((app["tmp"] / "ray_train" / "specialists-ci-v1").glob("heads_*"))  # the Ray Train checkpoint


def test_a_sure_query_is_answered_by_the_specialist_with_its_saving(client: OpenAI, app: dict[str, Any]) -> None:
    text, label = sure_query(app)
    answer, routing = ask(client, "cs_intent", text)
    assert answer == label
    assert routing["answered_by"] == "specialist" and [a["status"] for a in routing["attempts"]] == ["accepted"]
    attempt = routing["attempts"][0]
    assert attempt["uncertainty"] <= attempt["threshold"] == 0.5
    assert routing["saved_usd"] > 0.99 * routing["frontier_cost_usd"] > 0


def test_an_unserved_task_skips_the_specialist_at_no_cost(client: OpenAI, data_dir: Path) -> None:
    example = load_examples(task_file(data_dir, "legal_risk", "validation"), limit=1, seed=0)[0]
    answer, routing = ask(client, "legal_risk", example.input)
    skip = routing["attempts"][0]
    assert (skip["tier"], skip["status"], skip["reason"], skip["cost_usd"]) == (
        "specialist", "skipped", SKIP_UNSERVED, 0.0
    )
    assert routing["answered_by"] == "frontier" and routing["escalations"] == 0 and answer == example.reference


def test_a_forced_low_threshold_escalates_and_a_corrupt_release_is_refused(
    client: OpenAI, app: dict[str, Any]
) -> None:
    text, label = sure_query(app)
    store = ReleaseStore(app["tmp"] / "releases")
    strict = app["tmp"] / "strict.json"
    ThresholdTable(version="strict", thresholds={"specialist": {"cs_intent": 1e-9}}).save(strict)
    store.publish("strict", thresholds=strict)
    wait_for(lambda: health(app).get("release") == "strict", timeout_s=60)
    _, routing = ask(client, "cs_intent", text)
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [
        ("specialist", "escalated"), ("frontier", "accepted")
    ]
    assert routing["attempts"][0]["threshold"] == 1e-9

    # A release whose specialist artifact is corrupt: the tier refuses it and keeps serving ci-v1.
    broken = app["tmp"] / "broken"
    shutil.copytree(app["artifact"], broken)
    weights = broken / "cs_intent" / "head.npz"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    relaxed = app["tmp"] / "relaxed.json"
    ThresholdTable(version="relaxed", thresholds={"specialist": {"cs_intent": 0.5}}).save(relaxed)
    store.publish("broken", adapters={"specialist": broken}, thresholds=relaxed)
    wait_for(lambda: health(app).get("release") == "broken", timeout_s=60)
    wait_for(lambda: (tier_status()["refused"] or {}).get("version") == "broken", timeout_s=60)
    status = tier_status()
    assert "head.npz" in status["refused"]["error"] and "checksum" in status["refused"]["error"]
    assert status["artifact"] == str(app["artifact"]) and status["release"] == "strict"
    answer, routing = ask(client, "cs_intent", text)
    assert answer == label and routing["answered_by"] == "specialist"

    # A good artifact in a release is swapped in live.
    store.publish("good", adapters={"specialist": app["artifact"]}, thresholds=relaxed)
    wait_for(lambda: tier_status()["release"] == "good", timeout_s=60)
    assert tier_status()["artifact"].endswith("good/adapters/specialist")
    assert ask(client, "cs_intent", text)[1]["answered_by"] == "specialist"


def test_the_loop_refits_the_specialist_and_the_tier_swaps_to_its_release_and_back(
    client: OpenAI, app: dict[str, Any], data_dir: Path
) -> None:
    store = ReleaseStore(app["tmp"] / "releases")
    # The tier as the loop finds it: the trained artifact, with thresholds no answer meets, so
    # every query is escalated and the log is full of failures to mine.
    strict = ThresholdTable(version="loop-strict", thresholds={"specialist": {"cs_intent": 1e-9}}).save(
        app["tmp"] / "loop-strict.json")
    store.publish("before-loop", adapters={"specialist": app["artifact"]}, thresholds=strict)
    wait_for(lambda: tier_status()["release"] == "before-loop", timeout_s=60)
    served = tier_status()["artifact"]
    since = datetime.now(timezone.utc).isoformat()  # mine only the traffic below
    # Train queries the specialist was not fitted on (past the first TRAIN_PER_TASK of the same shuffle).
    unseen = load_examples(task_file(data_dir, "cs_intent", "train"), seed=0)[TRAIN_PER_TASK : TRAIN_PER_TASK + 24]
    for example in unseen:
        assert ask(client, "cs_intent", example.input)[1]["answered_by"] == "frontier"

    config = parse_config(app["config"])
    settings = LoopSettings(
        student_tier="specialist", since=since, n_clusters=3, top_cost_share=0.5, budget_examples=6, eval_tasks=["cs_intent"],
        eval_per_task=12, gate_tolerance=1.0, specialist={"cpus_per_worker": 0.5},
    )
    runs = app["tmp"] / "loop"
    iteration = Iteration(config, settings, config.storage.log_uri, data_dir, runs, "spec-1")
    assert iteration.starts_from == {"release": "before-loop", "artifact": served}
    result = iteration.run()

    # Targeted: only the selected clusters' failures; untargeted: as many, from all traffic.
    stages = runs / "spec-1" / "stages"
    mined = json.loads((stages / "mine.json").read_text())
    sets = json.loads((stages / "training_sets.json").read_text())
    selected = {q for c in mined["clusters"] if c["cluster"] in mined["top_clusters"] for q in c["query_ids"]}
    assert mined["n_failures"] == 24 and 0 < len(mined["top_clusters"]) < 3
    assert sets["targeted"] and {e["query_id"] for e in sets["targeted"]} <= selected
    assert len(sets["untargeted"]) == len(sets["targeted"]) == sets["budget"] <= 6

    # Each student is the served head refitted on its pairs plus the new ones, with the C it chose.
    base_c = read_manifest(served).tasks["cs_intent"].metrics["C"]
    for variant in ("targeted", "untargeted"):
        trained = json.loads((stages / f"train_{variant}.json").read_text())
        assert trained["init_artifact"] == str(Path(served).resolve())
        assert trained["task_Cs"] == {"cs_intent": [base_c]}
        refit = Path(trained["artifact_dir"])
        manifest = verify_artifact(refit, ["cs_intent"])
        assert manifest.tasks["cs_intent"].metrics["C"] == base_c
        texts, answers = read_pairs(refit / "cs_intent")
        added = sets[variant]
        assert texts == pairs_of(app).texts + [e["input"] for e in added]
        assert answers[len(pairs_of(app).answers):] == [e["answer"] for e in added]

    # Gated, published for the specialist tier, and swapped in live.
    assert result.gate_passed and result.published == "loop-spec-1"
    release = store.get("loop-spec-1")
    assert release.adapter_for("specialist").name == "specialist" and release.thresholds_path is not None
    wait_for(lambda: tier_status()["release"] == "loop-spec-1", timeout_s=120)
    status = tier_status()
    assert status["artifact"].endswith("loop-spec-1/adapters/specialist")
    assert (status["refused"] or {}).get("version") != "loop-spec-1"
    text, label = sure_query(app)
    assert ask(client, "cs_intent", text)[0] == label

    # One command rolls back; the tier swaps back to the artifact it served before.
    assert main(["release", "rollback", "--path", str(app["tmp"] / "releases")]) == 0
    wait_for(lambda: tier_status()["release"] == "before-loop", timeout_s=120)
    assert tier_status()["artifact"] == served


def test_a_failed_specialist_gate_publishes_nothing(app: dict[str, Any], data_dir: Path) -> None:
    runs = app["tmp"] / "loop"
    stages_with_a_quality_drop(runs, "spec-1", "spec-2", "cs_intent")
    store = ReleaseStore(app["tmp"] / "releases")
    before = store.versions()
    config = parse_config(app["config"])
    # The whole-release gate: the default per-task gate may still ship a thresholds-only recalibration.
    settings = LoopSettings(student_tier="specialist", eval_tasks=["cs_intent"], eval_per_task=12,
                            gate_scope="release")
    result = Iteration(config, settings, config.storage.log_uri, data_dir, runs, "spec-2").run()
    assert not result.gate_passed and result.published is None
    assert store.versions() == before and tier_status()["release"] == "before-loop"
