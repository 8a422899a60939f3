"""Loading task data, and the shared data scored against itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.tasks import (
    CS_INTENT_LABELS,
    LEGAL_CLAUSE_LABELS,
    LEGAL_RISK_LABELS,
    Example,
    get_task_spec,
    load_examples,
    task_file,
)
from tests.conftest import require_data_dir

SIX_TASKS = ["fin_ner", "fin_summarization", "cs_intent", "cs_response", "legal_clause", "legal_risk"]


def _write_rows(path: Path, n: int) -> Path:
    rows = [
        {"id": f"r{i}", "task": "t", "input": f"text {i}", "reference": f"label{i % 3}", "split": "validation"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return path


def test_load_examples(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "validation.jsonl", 10)
    examples = load_examples(path)
    assert len(examples) == 10
    assert examples[0] == Example(id="r0", task="t", input="text 0", reference="label0", extra={"split": "validation"})
    assert [e.id for e in load_examples(path, limit=3)] == ["r0", "r1", "r2"]
    assert load_examples(path, limit=0) == []


def test_seeded_sampling_is_deterministic(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "validation.jsonl", 50)
    first = [e.id for e in load_examples(path, limit=5, seed=7)]
    assert first == [e.id for e in load_examples(path, limit=5, seed=7)]
    assert first != [e.id for e in load_examples(path, limit=5, seed=8)]
    assert first != ["r0", "r1", "r2", "r3", "r4"]
    assert sorted(e.id for e in load_examples(path, seed=7)) == sorted(f"r{i}" for i in range(50))


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "task": "t", "input": "x", "reference": "y"}\n{"id": "b", "input": "x"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl' line 2 lacks the fields \['task', 'reference'\]"):
        load_examples(path)
    path.write_text("not json\n")
    with pytest.raises(ConfigError, match="line 1 is not valid JSON"):
        load_examples(path)


def test_task_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data directory .* does not exist"):
        task_file(tmp_path / "missing", "cs_intent", "train")
    (tmp_path / "cs_intent").mkdir()
    _write_rows(tmp_path / "cs_intent" / "validation.jsonl", 2)
    with pytest.raises(ConfigError, match=r"train.jsonl' does not exist; splits of 'cs_intent': \['validation'\]"):
        task_file(tmp_path, "cs_intent", "train")
    with pytest.raises(ConfigError, match=r"task folder .*legal_risk' does not exist; folders in .*\['cs_intent'\]"):
        task_file(tmp_path, "legal_risk", "validation")
    assert task_file(tmp_path, "cs_intent", "validation") == tmp_path / "cs_intent" / "validation.jsonl"


# ---------------------------------------------------------------------------------------------
# The shared evaluation data (skipped when it is not there)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return require_data_dir()


def _replayed(reference: Any) -> str:
    # What the replay tier answers: references as they are, structured ones as JSON.
    return reference if isinstance(reference, str) else json.dumps(reference, ensure_ascii=False)


@pytest.mark.parametrize("task", SIX_TASKS)
def test_reference_scores_the_maximum_against_itself(data_dir: Path, task: str) -> None:
    spec = get_task_spec(task)
    # fin_ner's first rows carry no entities; sample so that some do.
    examples = load_examples(spec.data_file(data_dir, "validation"), limit=4 if task == "cs_response" else 12, seed=0)
    assert examples and all(e.task == task for e in examples)
    if task == "fin_ner":
        assert any(e.reference for e in examples)
    predictions = [_replayed(e.reference) for e in examples]
    references = [e.reference for e in examples]
    scores = spec.score_batch(predictions, references)
    assert scores == pytest.approx([1.0] * len(examples), abs=1e-5)
    assert spec.is_correct(predictions[0], references[0])
    result = spec.evaluate(predictions, references)
    assert result[spec.primary_metric] == pytest.approx(1.0, abs=1e-5)
    assert result.get("unparseable_rate", 0.0) == 0.0


@pytest.mark.parametrize(
    ("task", "labels"),
    [("cs_intent", CS_INTENT_LABELS), ("legal_clause", LEGAL_CLAUSE_LABELS)],
)
def test_packaged_labels_match_the_data(data_dir: Path, task: str, labels: tuple[str, ...]) -> None:
    assert list(labels) == json.loads((data_dir / task / "labels.json").read_text())


def test_legal_risk_references_use_the_three_levels(data_dir: Path) -> None:
    spec = get_task_spec("legal_risk")
    references = {e.reference for e in load_examples(spec.data_file(data_dir, "validation"))}
    assert references == set(LEGAL_RISK_LABELS)
