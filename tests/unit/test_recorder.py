from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from routenlp_ray import EngineError
from routenlp_ray.config import parse_config
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.recording import Recorder, StaleRecordsError, load_records, record_path
from tests.conftest import small_config_dict


@dataclass(frozen=True)
class Row:
    id: str
    input: str


class CountingEngine:
    """A collaborator engine that fails on inputs containing 'boom' and counts its calls."""

    name = "cheap"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.seen.append(request.request_id)
        if "boom" in (request.raw_input or ""):
            raise EngineError("bad input")
        return GenerationResult(f"answer {request.raw_input}", [-0.5, -0.25], 40, 2, latency_ms=3.0)

    async def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [await self.generate(r) for r in requests]

    def check_health(self) -> None:
        return None


def test_records_every_tier_once_and_resumes(tmp_path: Path, replay_file: Path) -> None:
    config = parse_config(small_config_dict(tmp_path, replay_file))
    engine = CountingEngine()
    examples = [Row("a", "where is my new card?"), Row("b", "boom"), Row("c", "hello")]
    recorder = Recorder(config, tmp_path / "records", engines={"cheap": engine}, batch_size=2)
    assert recorder.record("cs_intent", "validation", examples[:2], progress=False) == {"cheap": 2, "frontier": 2}
    asked_before_resume = len(engine.seen)
    assert recorder.record("cs_intent", "validation", examples, progress=False) == {"cheap": 1, "frontier": 1}
    assert engine.seen[asked_before_resume:] == ["c"]
    records = load_records(tmp_path / "records", "cs_intent", "validation", ["cheap", "frontier"])
    assert sorted(records["cheap"]) == ["a", "b", "c"]
    good, bad = records["cheap"]["a"], records["cheap"]["b"]
    assert good["token_logprobs"] == [-0.5, -0.25] and good["cost_usd"] == pytest.approx((40 * 0.1 + 2 * 0.2) / 1e6)
    assert bad["text"] is None and "bad input" in bad["error"]
    # The replay frontier answers recorded inputs and misses the rest, both recorded.
    assert records["frontier"]["a"]["text"] == "card_arrival"
    assert "ReplayMissError" in records["frontier"]["b"]["error"]


def test_changed_settings_make_old_records_stale(tmp_path: Path, replay_file: Path) -> None:
    config = parse_config(small_config_dict(tmp_path, replay_file))
    Recorder(config, tmp_path / "r", engines={"cheap": CountingEngine()}).record(
        "chat", "validation", [Row("a", "hello")], tiers=["cheap"], progress=False
    )
    with pytest.raises(StaleRecordsError, match="other settings"):
        Recorder(config, tmp_path / "r", engines={"cheap": CountingEngine()}, max_tokens={"chat": 5}).record(
            "chat", "validation", [Row("a", "hello")], tiers=["cheap"], progress=False
        )


def test_a_line_cut_by_a_crash_is_recorded_again(tmp_path: Path, replay_file: Path) -> None:
    config = parse_config(small_config_dict(tmp_path, replay_file))
    recorder = Recorder(config, tmp_path / "r", engines={"cheap": CountingEngine()})
    recorder.record("chat", "validation", [Row("a", "hello")], tiers=["cheap"], progress=False)
    path = record_path(tmp_path / "r", "chat", "validation", "cheap")
    with path.open("a") as handle:
        handle.write(json.dumps({"example_id": "b"})[:10])  # half a line
    assert recorder.record("chat", "validation", [Row("a", "hello"), Row("b", "x")], tiers=["cheap"], progress=False) == {"cheap": 1}
