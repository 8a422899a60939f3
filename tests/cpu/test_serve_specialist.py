"""A specialist distilled in a Ray Train job, served on real Ray Serve, asked through the openai client.

Covers the specialist issue's must-shows: a sure cs_intent query is accepted by the specialist
and shows the saving; a forced-low threshold escalates it; an unserved task skips the tier at
no cost; a corrupt artifact published as a release is refused and the running version stays.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from routenlp_ray.cascade import SKIP_UNSERVED
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.releases import ReleaseStore
from routenlp_ray.specialists import TaskPairs, distill_specialists, read_manifest
from routenlp_ray.tasks.data import load_examples, task_file
from tests.cpu.conftest import wait_for

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
    replay = [str(data_dir / "cs_intent" / "train.jsonl"), str(data_dir / "legal_risk" / "validation.jsonl")]
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
    yield {"port": serve_instance, "tmp": tmp, "artifact": artifact, "pairs": pairs}
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


def sure_query(app: dict[str, Any]) -> tuple[str, str]:
    """A training query, which the specialist has seen answered: it is sure of it."""
    pairs = app["pairs"]
    return pairs.texts[0], pairs.answers[0]


def test_training_ran_on_ray_train_and_wrote_a_checksummed_artifact(app: dict[str, Any]) -> None:
    manifest = read_manifest(app["artifact"])
    head = manifest.tasks["cs_intent"]
    assert manifest.version == "ci-v1" and head.kind == "label" and head.n_examples == TRAIN_PER_TASK
    assert set(head.files) == {"head.json", "head.npz", "lexical.json"}  # weights, label map, word features
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
