"""The soak benchmark's pure parts: phase plan, drift traffic, per-minute aggregation and the report files."""

from __future__ import annotations

from pathlib import Path

import pytest

from routenlp_ray.bench.load import phase_windows, summarize_phases
from routenlp_ray.bench.soak import (
    DriftSpec,
    drift_traffic,
    parse_phase_plan,
    per_minute,
    phase_kind,
    plot_soak,
    soak_markdown,
    soak_phases,
)


def _rows(task: str, n: int, labels: list[str], split: str = "validation") -> list[dict]:
    return [{"id": f"{task}-{split}-{i}", "task": task, "input": f"{task} {split} {i}",
             "reference": labels[i % len(labels)], "split": split} for i in range(n)]


BASE = [row for pair in zip(_rows("cs_intent", 10, ["a"]), _rows("legal_clause", 10, ["x"])) for row in pair]
POOL = _rows("legal_clause", 40, [f"L{i}" for i in range(8)], split="train")


def test_the_phase_plan_splits_the_minutes_and_names_repeated_kinds() -> None:
    plan = parse_phase_plan(["steady=1", "drift=2", "steady=1"])
    phases = soak_phases(16, plan, clients=4, pause_s=0.1)
    assert [(p.name, p.duration_s, p.clients, p.kill) for p in phases] == [
        ("steady", 240.0, 4, None), ("drift", 480.0, 4, None), ("steady-2", 240.0, 4, None)]
    assert [phase_kind(p.name) for p in phases] == ["steady", "drift", "steady"]
    for bad in (["steady"], ["calm=0.5"], ["drift=0"], []):
        with pytest.raises(ValueError):
            parse_phase_plan(bad)


def test_drift_replaces_only_the_drift_tasks_share_with_rows_of_the_chosen_labels() -> None:
    rows, info = drift_traffic(BASE, POOL, DriftSpec(task="legal_clause", split="train", labels_share=0.5, seed=3))
    assert len(rows) == len(BASE)
    assert [r["task"] for r in rows] == [r["task"] for r in BASE]  # the mix and its order stay
    assert [r for r in rows if r["task"] == "cs_intent"] == [r for r in BASE if r["task"] == "cs_intent"]
    clause = [r for r in rows if r["task"] == "legal_clause"]
    assert all(r["split"] == "train" and r["reference"] in info["labels"] for r in clause)
    assert len(info["labels"]) == 4 and info["labels_total"] == 8 and info["rows_available"] == 20
    assert len({r["id"] for r in clause}) == 10  # the pool is walked in turn, not one row repeated
    assert info["traffic_share"] == 0.5
    assert "4 of its 8 labels (seed 3)" in info["description"]
    assert "distilled on the train splits" in info["description"]
    # The pick is seeded: the same seed, the same labels; another seed, (here) others.
    assert drift_traffic(BASE, POOL, DriftSpec(seed=3))[1]["labels"] == info["labels"]
    assert drift_traffic(BASE, POOL, DriftSpec(seed=4))[1]["labels"] != info["labels"]


def test_drift_labels_can_be_named() -> None:
    rows, info = drift_traffic(BASE, POOL, DriftSpec(labels=("L1", "L6")))
    assert info["labels"] == ["L1", "L6"] and "(named)" in info["description"]
    assert {r["reference"] for r in rows if r["task"] == "legal_clause"} == {"L1", "L6"}
    with pytest.raises(ValueError, match="'nope'"):
        drift_traffic(BASE, POOL, DriftSpec(labels=("L1", "nope")))


def test_drift_needs_a_share_to_replace_and_rows_to_replace_it_with() -> None:
    with pytest.raises(ValueError, match="fin_ner"):
        drift_traffic(BASE, _rows("fin_ner", 3, ["e"]), DriftSpec(task="fin_ner"))
    with pytest.raises(ValueError, match="no 'legal_clause' rows"):
        drift_traffic(BASE, [], DriftSpec())
    with pytest.raises(ValueError, match="1.5"):
        DriftSpec(labels_share=1.5)


def _request(t: float, phase: str, saved: float, tier: str, ok: bool = True) -> dict:
    if not ok:
        return {"phase": phase, "t": t, "latency_ms": 50.0, "ok": False, "task": "cs_intent", "error": "APIError"}
    return {"phase": phase, "t": t, "latency_ms": 50.0, "ok": True, "task": "cs_intent", "answered_by": tier,
            "saved_usd": saved, "frontier_cost_usd": 1.0, "cost_usd": 1.0 - saved, "thresholds_version": "v1"}


# Two minutes of steady traffic that saves 90%, then two of drift where it saves 30%.
PHASES = soak_phases(4, parse_phase_plan(["steady=0.5", "drift=0.5"]), clients=2, pause_s=0.1)
REQUESTS = ([_request(float(t), "steady", 0.9, "specialist") for t in range(0, 120, 2)]
            + [_request(float(t), "drift", 0.3, "frontier") for t in range(120, 240, 2)]
            + [_request(150.0, "drift", 0.0, "frontier", ok=False)])
LABELS = ([{"t": 30.0, "tier": "specialist", "task": "cs_intent", "accepted": True, "correct": True}] * 50
          + [{"t": 150.0, "tier": "specialist", "task": "legal_clause", "accepted": True, "correct": False}] * 30
          + [{"t": 150.0, "tier": "specialist", "task": "legal_clause", "accepted": True, "correct": True}] * 20)
EVENTS = [{"t": 125.0, "event": "recalibration", "reason": "quality_breach", "before_version": "v1",
           "after_version": "live-2", "changes": [{"tier": "specialist", "task": "legal_clause", "before": 0.8,
                                                   "after": 0.3}]},
          {"t": 130.0, "event": "audit_boost", "tier": "specialist", "task": "legal_clause", "rate": 0.5}]


def test_per_minute_rows_aggregate_savings_tiers_audits_and_events() -> None:
    rows = per_minute(REQUESTS, LABELS, EVENTS, phase_windows(PHASES))
    assert [(r["minute"], r["phase"], r["requests"]) for r in rows] == [
        (0, "steady", 30), (1, "steady", 30), (2, "drift", 31), (3, "drift", 30)]
    assert rows[0]["saved_share"] == pytest.approx(0.9) and rows[2]["saved_share"] == pytest.approx(0.3)
    assert rows[2]["errors"] == 1 and rows[2]["answered_by"] == {"frontier": 30}
    assert rows[0]["accepted_error"]["rate"] == 0.0 and rows[1]["accepted_error"]["rate"] is None
    assert rows[2]["accepted_error"]["rate"] == pytest.approx(0.6)
    assert rows[2]["accepted_error_by_cell"]["specialist/legal_clause"]["accepted"] == 50
    assert [e["event"] for e in rows[2]["events"]] == ["recalibration", "audit_boost"]
    assert rows[0]["thresholds_versions"] == {"v1": 30}


def test_a_drop_with_audited_errors_behind_it_is_not_flagged_and_the_report_is_written(tmp_path: Path) -> None:
    phases = summarize_phases(PHASES, REQUESTS, [], LABELS, EVENTS)
    assert phases[1]["savings_flag"]["vs_previous"]["fell"]
    assert phases[1]["savings_flag"]["vs_previous"]["quality_rose"] and not phases[1]["savings_flag"]["flagged"]
    drift = drift_traffic(BASE, POOL, DriftSpec())[1]
    report = {
        "created_at": "2027-01-15T08:00:00", "machine": {"cpus": 2}, "config": "c.yaml", "tasks": ["cs_intent"],
        "minutes": 4, "clients": 2, "pause_s": 0.1, "client": "openai",
        "monitoring": {"audit_rate": 0.1, "method": "quality", "window": 200},
        "traffic": {"steady": {"cs_intent": 10}, "drift": {"cs_intent": 10}}, "drift": drift,
        "totals": {"requests": len(REQUESTS), "errors": 1, "saved_share": 0.6, "audit_labels": len(LABELS),
                   "accepted_error": {"labelled": 100, "accepted": 100, "accepted_wrong": 30, "rate": 0.3,
                                      "ci95": [0.22, 0.4]}},
        "phases": phases, "per_minute": per_minute(REQUESTS, LABELS, EVENTS, phase_windows(PHASES)),
        "monitor_events": EVENTS, "audit_labels": len(LABELS),
    }
    text = soak_markdown(report, "soak.png")
    assert "| 2 | drift | 31 | 1 | 30.0% |" in text
    assert "**Drift phases:** the legal_clause share" in text
    assert "- t=125.0 s: **recalibration** (quality_breach), `v1` -> `live-2`; 1 change(s):" in text
    assert "**audit_boost**" in text and "Flagged" not in text
    plot_soak(report, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"
