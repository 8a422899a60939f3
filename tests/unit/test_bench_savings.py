"""Savings and audited quality of benchmark traffic: the pure parts of ``bench/savings.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray.bench.savings import (
    SpanStats,
    accepted_error,
    accepted_error_by,
    binned_saved_share,
    event_line,
    flag_sentence,
    on_timeline,
    phase_savings_flags,
    read_monitor_log,
    routing_fields,
    saved_share,
    savings_fall,
    span_summary,
)

T0 = 1_800_000_000.0  # epoch seconds of the synthetic runs' first phase


def _request(t: float, saved: float, frontier: float = 1.0, phase: str = "a", ok: bool = True,
             tier: str = "specialist", version: str = "v1") -> dict:
    return {"phase": phase, "t": t, "latency_ms": 100.0, "ok": ok, "answered_by": tier, "saved_usd": saved,
            "frontier_cost_usd": frontier, "cost_usd": frontier - saved, "thresholds_version": version}


def _labels(t: float, accepted: int, wrong: int, tier: str = "specialist", task: str = "cs_intent") -> list[dict]:
    return [{"t": t, "tier": tier, "task": task, "accepted": True, "correct": i >= wrong} for i in range(accepted)]


def test_routing_fields_keep_the_costs_and_version_of_a_response() -> None:
    routing = {"answered_by": "frontier", "cost_usd": 0.002, "frontier_cost_usd": 0.002, "saved_usd": 0.0,
               "thresholds_version": "live-1", "fallback": False, "escalations": 1, "attempts": [{"tier": "x"}]}
    assert routing_fields(routing) == {k: v for k, v in routing.items() if k != "attempts"}


def test_saved_share_is_summed_saving_over_summed_frontier_cost_of_answered_requests() -> None:
    requests = [_request(0, 0.9), _request(1, 0.0, frontier=3.0), _request(2, 5.0, frontier=5.0, ok=False)]
    assert saved_share(requests) == pytest.approx(0.9 / 4.0)
    assert saved_share([]) is None


def test_accepted_error_counts_only_accepted_labels_and_gives_a_wilson_interval() -> None:
    labels = _labels(0, 20, 2) + [{"t": 0, "tier": "specialist", "task": "cs_intent", "accepted": False,
                                   "correct": False}]
    summary = accepted_error(labels)
    assert (summary["labelled"], summary["accepted"], summary["accepted_wrong"]) == (21, 20, 2)
    assert summary["rate"] == pytest.approx(0.1)
    low, high = summary["ci95"]
    assert low < 0.1 < high
    assert accepted_error([])["rate"] is None and accepted_error([])["ci95"] is None
    cells = accepted_error_by(labels + _labels(0, 4, 4, task="fin_ner"))
    assert cells["specialist/fin_ner"]["rate"] == 1.0 and cells["specialist/cs_intent"]["accepted"] == 20


def test_savings_fall_without_a_quality_change_is_flagged() -> None:
    before = SpanStats(saved_usd=90, frontier_cost_usd=100, accepted=100, accepted_wrong=3)
    after = SpanStats(saved_usd=10, frontier_cost_usd=100, accepted=100, accepted_wrong=4)
    verdict = savings_fall(before, after)
    assert verdict["fell"] and not verdict["quality_rose"] and verdict["flagged"]
    assert verdict["relative_fall"] == pytest.approx(80 / 90)


def test_savings_fall_with_a_significant_rise_in_accepted_errors_is_not_flagged() -> None:
    before = SpanStats(saved_usd=90, frontier_cost_usd=100, accepted=200, accepted_wrong=4)
    after = SpanStats(saved_usd=30, frontier_cost_usd=100, accepted=200, accepted_wrong=60)
    verdict = savings_fall(before, after)
    assert verdict["fell"] and verdict["quality_rose"] and not verdict["flagged"]


def test_without_labels_a_fall_is_flagged_and_a_small_fall_is_not() -> None:
    assert savings_fall(SpanStats(90, 100, 0, 0), SpanStats(0, 100, 0, 0))["flagged"]
    # A fall of exactly a fifth, or less, is no fall.
    assert not savings_fall(SpanStats(50, 100, 0, 0), SpanStats(40, 100, 0, 0))["fell"]
    # Nothing to compare with: no frontier cost before, or nothing saved before.
    assert not savings_fall(SpanStats(0, 0, 0, 0), SpanStats(0, 100, 0, 0))["fell"]
    assert not savings_fall(SpanStats(0, 100, 0, 0), SpanStats(0, 100, 0, 0))["fell"]


def test_phase_flags_compare_with_the_phase_before_and_first_with_last_third() -> None:
    # Phase a saves 90% throughout; phase b saves 90% in its first third and nothing after,
    # with a handful of audits that show no change; phase c saves nothing throughout.
    requests = ([_request(t, 0.9, phase="a") for t in range(30)]
                + [_request(30 + t, 0.9 if t < 10 else 0.0, phase="b") for t in range(30)]
                + [_request(60 + t, 0.0, phase="c") for t in range(30)])
    labels = _labels(5, 10, 0) + _labels(35, 10, 0) + _labels(55, 3, 0)
    windows = [("a", 0.0, 30.0), ("b", 30.0, 60.0), ("c", 60.0, 90.0)]
    flags = phase_savings_flags(requests, labels, windows)
    assert [f["flagged"] for f in flags] == [False, True, True]
    assert flags[0]["vs_previous"] is None and not flags[0]["within"]["fell"]
    assert flags[1]["within"]["flagged"] and flags[1]["vs_previous"]["flagged"]
    assert flags[1]["within"]["saved_share_before"] == pytest.approx(0.9)
    assert flags[2]["vs_previous"]["flagged"] and not flags[2]["within"]["fell"]
    assert "phase b" in flag_sentence(flags[1]) and flag_sentence(flags[0]) == ""


def test_a_drop_explained_by_audited_errors_is_not_flagged() -> None:
    requests = [_request(t, 0.9, phase="a") for t in range(30)] + [_request(30 + t, 0.2, phase="b") for t in range(30)]
    labels = _labels(5, 200, 4) + _labels(45, 200, 70)
    flags = phase_savings_flags(requests, labels, [("a", 0.0, 30.0), ("b", 30.0, 60.0)])
    assert flags[1]["vs_previous"]["fell"] and flags[1]["vs_previous"]["quality_rose"]
    assert not flags[1]["flagged"]


def test_span_summary_counts_tiers_versions_and_events() -> None:
    requests = [_request(0, 0.9), _request(1, 0.0, tier="frontier", version="live-2"), _request(2, 0.0, ok=False)]
    events = [{"t": 1.5, "event": "recalibration", "reason": "coverage", "before_version": "v1",
               "after_version": "live-2", "changes": [{"tier": "specialist"}]}]
    summary = span_summary(requests, _labels(0, 2, 1), events)
    assert summary["answered_by"] == {"frontier": 1, "specialist": 1}
    assert summary["thresholds_versions"] == {"v1": 1, "live-2": 1}
    assert summary["events"] == [{"t": 1.5, "event": "recalibration", "reason": "coverage", "before_version": "v1",
                                  "after_version": "live-2"}]
    assert summary["accepted_error"]["rate"] == 0.5


def test_bins_hold_the_requests_finishing_in_them() -> None:
    requests = [_request(0.0, 1.0), _request(4.95, 0.0), _request(6.0, 0.5)]  # the second finishes at 5.05 s
    bins = binned_saved_share(requests, 5.0)
    assert [(b["t"], b["n"]) for b in bins] == [(2.5, 1), (7.5, 2)]
    assert bins[1]["saved_share"] == pytest.approx(0.25)


def test_timestamps_become_seconds_since_the_start() -> None:
    records = [{"ts": "2027-01-15T08:00:10+00:00", "id": "b"}, {"t": T0 + 3.0, "id": "a"}, {"id": "no time"}]
    placed = on_timeline(records, T0)
    assert [r["id"] for r in placed] == ["a", "b"] and placed[0]["t"] == pytest.approx(3.0)
    zulu = on_timeline([{"ts": "2027-01-15T08:00:10Z"}], T0)[0]
    assert zulu["t"] == pytest.approx(placed[1]["t"]) and zulu["epoch"] == pytest.approx(T0 + zulu["t"])


def _write_stream(log: Path, stream: str, records: list[dict]) -> None:
    (log / stream).mkdir(parents=True)
    (log / stream / "0001-seg.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_monitor_log_reads_events_of_every_monitor_kind_and_tolerates_no_labels(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    def ts(seconds: float) -> str:
        return datetime.fromtimestamp(T0 + seconds, timezone.utc).isoformat()

    _write_stream(tmp_path, "events", [
        {"id": "1", "ts": ts(12.0), "event": "recalibration", "reason": "coverage_drop",
         "before": {"thresholds_version": "v1"}, "after": {"thresholds_version": "live-2"},
         "changes": [{"tier": "specialist", "task": "cs_intent", "before": 1.2, "after": None}]},
        {"id": "2", "ts": ts(20.0), "event": "threshold_kept", "tier": "specialist", "task": "cs_intent", "n": 40},
        {"id": "3", "ts": ts(21.0), "event": "audit_boost", "tier": "specialist", "rate": 0.5},
        {"id": "4", "ts": ts(22.0), "event": "rollback"},
    ])
    events, labels = read_monitor_log(str(tmp_path), T0)
    assert labels == []
    assert [e["event"] for e in events] == ["recalibration", "threshold_kept", "audit_boost"]
    assert events[0]["t"] == pytest.approx(12.0) and events[0]["after_version"] == "live-2"
    assert "id" not in events[0] and "ts" not in events[0]
    line = event_line(events[0])
    assert "**recalibration** (coverage_drop)" in line and "`v1` -> `live-2`" in line and '"after": null' in line
    assert 'n=40' in event_line(events[1])

    _write_stream(tmp_path, "labels", [{"id": "l1", "ts": ts(99.0), "t": T0 + 5.0, "tier": "specialist",
                                         "accepted": True, "correct": False}])
    _, labels = read_monitor_log(str(tmp_path), T0)
    assert labels[0]["t"] == pytest.approx(5.0)  # the epoch ``t`` wins over ``ts``
