"""`routenlp calibrate --groups`: the quality rule certified over a task's groups (contracts, documents).

Rows from one contract are not exchangeable with rows from another, so a bound fitted on rows holds
for more rows like them, not for a contract it never saw. Certified over groups, it needs enough
groups: at legal_risk's 4% budget and delta 0.1, 57 even when the tier is never wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray.cli import main
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.config import load_config
from routenlp_ray.tasks.data import row_groups
from tests.conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "serve_config.local.yaml")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _legal_risk(tmp_path: Path, documents: int, rows: int = 300) -> tuple[Path, Path]:
    """A data dir of ``rows`` legal_risk sentences spread over ``documents`` documents, and records
    in which the specialist is always right and sure of it."""
    data, records = tmp_path / "data", tmp_path / "records"
    examples = [{"id": f"r{i}", "task": "legal_risk", "input": f"clause {i}", "reference": "fair",
                 "document": f"doc{i % documents}"} for i in range(rows)]
    _write_jsonl(data / "legal_risk" / "validation.jsonl", examples)
    for tier, logprob in (("specialist", -0.01), ("frontier", -0.001)):
        _write_jsonl(records / "legal_risk" / "validation" / f"{tier}.jsonl", [
            {"example_id": e["id"], "task": "legal_risk", "split": "validation", "tier": tier, "text": "fair",
             "token_logprobs": [logprob], "cost_usd": 1e-6 if tier == "specialist" else 1e-3} for e in examples])
    return data, records


def _calibrate(data: Path, records: Path, out: Path, *extra: str) -> ThresholdTable:
    assert main(["calibrate", "--config", CONFIG, "--data-dir", str(data), "--records", str(records),
                 "--tasks", "legal_risk", "--method", "quality", "--out", str(out), *extra]) == 0
    return ThresholdTable.load(out)


@pytest.mark.parametrize(("documents", "certified"), [(10, False), (80, True)])
def test_grouped_certification_needs_enough_documents_where_rows_alone_always_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], documents: int, certified: bool) -> None:
    data, records = _legal_risk(tmp_path, documents)
    by_rows = _calibrate(data, records, tmp_path / "rows.json")
    assert by_rows.get("specialist", "legal_risk") is not None  # 300 right answers certify the row-level rule
    capsys.readouterr()

    by_groups = _calibrate(data, records, tmp_path / "groups.json", "--groups")
    printed = capsys.readouterr().out
    assert (by_groups.get("specialist", "legal_risk") is not None) is certified
    assert (f"certified over {documents} documents" if certified
            else f"over {documents} documents: too few to certify") in printed


def test_groups_need_the_quality_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, records = _legal_risk(tmp_path, 80)
    assert main(["calibrate", "--config", CONFIG, "--data-dir", str(data), "--records", str(records),
                 "--tasks", "legal_risk", "--method", "coverage", "--groups", "--out", str(tmp_path / "t.json")]) == 1
    assert "--groups" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def test_row_groups_reads_the_tasks_group_field_and_names_a_row_without_it(tmp_path: Path) -> None:
    config = load_config(CONFIG)
    assert config.task("legal_clause").group_field == "contract" and config.task("cs_intent").group_field is None
    data, _ = _legal_risk(tmp_path, 3, rows=6)
    assert row_groups(config.task("legal_risk"), data, ["validation", "test"]) == {
        f"r{i}": f"doc{i % 3}" for i in range(6)}  # a split without a file is skipped
    assert row_groups(config.task("cs_intent"), data, ["validation"]) == {}
    _write_jsonl(data / "legal_risk" / "validation.jsonl",
                 [{"id": "x1", "task": "legal_risk", "input": "a clause", "reference": "fair"}])
    with pytest.raises(ValueError, match="group_field 'document' is not a field of row 'x1'"):
        row_groups(config.task("legal_risk"), data, ["validation"])
