"""A fine-tuned label specialist trained in a Ray Train job, served by the specialist engine, continued by a refit.

Real cs_intent pairs, the real packaged MiniLM, a real ``TorchTrainer`` run (one CPU worker);
kept small (600 pairs, one trained layer, 3 epochs) so it runs in about a minute on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from routenlp_ray.config.tiers import SpecialistEngineConfig
from routenlp_ray.engines.base import GenerationRequest
from routenlp_ray.engines.specialist import SpecialistEngine
from routenlp_ray.loop.specialist_student import SpecialistRefitSettings, refit_specialist
from routenlp_ray.specialists import (
    FineTuneSettings,
    SpecialistTrainingConfig,
    TaskPairs,
    distill_specialists,
    read_manifest,
    verify_artifact,
)
from routenlp_ray.tasks.data import load_examples, task_file

pytestmark = pytest.mark.slow

SETTINGS = FineTuneSettings(trained_layers=1, epochs=3, head_learning_rate=1e-2, learning_rate=2e-4)


@pytest.fixture(scope="module")
def trained(ray_cluster: None, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("finetuned")
    examples = load_examples(task_file(data_dir, "cs_intent", "train"), limit=600, seed=0)
    pairs = TaskPairs(kind="label", texts=[e.input for e in examples], answers=[e.reference for e in examples])
    config = SpecialistTrainingConfig(finetune={"cs_intent": SETTINGS}, cpus_per_worker=1)
    artifact = distill_specialists({"cs_intent": pairs}, tmp / "ft-v1", "ft-v1", config=config,
                                   storage_path=tmp / "ray_train")
    return {"tmp": tmp, "artifact": artifact, "pairs": pairs}


def test_the_ray_train_job_writes_a_checksummed_fine_tuned_head(trained: dict) -> None:
    manifest = verify_artifact(trained["artifact"], ["cs_intent"])
    entry = manifest.tasks["cs_intent"]
    assert entry.kind == "label" and entry.n_examples == 600
    assert set(entry.files) == {"head.json", "top.safetensors", "pairs.jsonl"}
    assert entry.metrics["epochs"] in (1, 2, 3) and "holdout_at_epoch=3" in entry.metrics
    head = json.loads((Path(trained["artifact"]) / "cs_intent" / "head.json").read_text())
    assert head["kind"] == "finetuned_label" and head["trained_layers"] == 1
    assert any((trained["tmp"] / "ray_train" / "specialists-ft-v1").glob("heads_*"))  # the Ray Train checkpoint


def test_the_engine_serves_it_with_class_log_probabilities(trained: dict, data_dir: Path) -> None:
    engine = SpecialistEngine(SpecialistEngineConfig(path=str(trained["artifact"])), tasks=["cs_intent"])
    rows = load_examples(task_file(data_dir, "cs_intent", "validation"), limit=100, seed=0)
    requests = [GenerationRequest(request_id=str(i), messages=[{"role": "user", "content": r.input}],
                                  task="cs_intent", raw_input=r.input) for i, r in enumerate(rows)]
    results = asyncio.run(engine.generate_batch(requests))
    assert {r.metadata["head"] for r in results} == {"finetuned_label"}
    assert all(len(r.token_logprobs) == 1 and r.token_logprobs[0] <= 0 for r in results)
    accuracy = sum(r.text == row.reference for r, row in zip(results, rows)) / len(rows)
    # 600 pairs of 77 intents (8 each): far above chance (1.3%), far below a full fit.
    assert accuracy >= 0.3, accuracy


def test_a_loop_refit_continues_the_fine_tuned_head(trained: dict) -> None:
    extra = [{"task": "cs_intent", "input": "my card never came, what now", "answer": "card_arrival"}] * 4
    result = refit_specialist(trained["artifact"], {"cs_intent": trained["pairs"]}, extra,
                              trained["tmp"] / "ft-v2", "ft-v2", SpecialistRefitSettings(cpus_per_worker=1),
                              storage_path=trained["tmp"] / "ray_train", run_name="ft-v2")
    assert result["continued_finetuned_heads"] == ["cs_intent"]
    head = json.loads((Path(result["artifact_dir"]) / "cs_intent" / "head.json").read_text())
    assert head["kind"] == "finetuned_label"
    assert head["training"]["init_from"] == str((Path(trained["artifact"]) / "cs_intent").resolve())
    assert read_manifest(result["artifact_dir"]).tasks["cs_intent"].n_examples == 604
