"""A LoRA student's earlier distillation pairs: read from its lineage, or rebuilt from distill-student's recipe."""

from __future__ import annotations

import json
from pathlib import Path

from routenlp_ray.config import parse_config
from routenlp_ray.loop.rehearsal import earlier_pairs, write_lineage
from tests.conftest import small_config_dict


def test_an_adapter_written_by_the_loop_carries_its_lineage_without_duplicates(tmp_path: Path) -> None:
    earlier = [{"task": "cs_intent", "input": "where is my card?", "answer": "card_arrival"}]
    new = [{"task": "cs_intent", "input": "where is my card?", "answer": "card_arrival", "source": "log"},
           {"task": "cs_intent", "input": "refund me", "answer": "request_refund", "query_id": "q1"}]
    write_lineage(tmp_path, earlier, new)
    assert earlier_pairs(tmp_path, config=None) == [earlier[0], {k: new[1][k] for k in ("task", "input", "answer")}]
    assert earlier_pairs(None, config=None) == [] and earlier_pairs(tmp_path / "bare", config=None) == []


def test_an_adapter_from_distill_student_gets_its_pairs_back_from_its_recipe(tmp_path: Path) -> None:
    data = tmp_path / "data" / "cs_intent"
    data.mkdir(parents=True)
    rows = [{"id": f"r{i}", "task": "cs_intent", "input": f"question {i}", "reference": f"label_{i}"} for i in range(6)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    replay = tmp_path / "replay.jsonl"
    replay.write_text((data / "train.jsonl").read_text())
    config = parse_config(small_config_dict(tmp_path, replay))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "student.json").write_text(json.dumps({
        "data_dir": str(tmp_path / "data"), "split": "train", "seed": 0,
        "tasks": {"cs_intent": {"train": 3, "held_out": 2, "without_answer": 0}}}))
    pairs = earlier_pairs(adapter, config)
    from routenlp_ray.tasks.data import load_examples

    sampled = load_examples(data / "train.jsonl", limit=5, seed=0)
    # The three rows it trained on (the first two of its seeded sample were held out), with the frontier's answers.
    assert [p["input"] for p in pairs] == [r.input for r in sampled[2:]]
    assert all(p["answer"] == "label_" + p["input"].split()[-1] for p in pairs)
