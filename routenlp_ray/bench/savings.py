"""Savings and audited quality of live traffic: what every benchmark that sends requests reports.

A benchmark records, per request, the ``routing`` object's cost fields (what it cost, what the
frontier alone would have cost, the saving) and the thresholds version that decided it. After
the run it reads the coverage monitor's records from the query log: its ``events`` (recalibrations,
``threshold_*`` and ``audit_*`` events) and its ``labels`` (one per audited cheap-tier answer).

From these, for any span of time: the share of frontier cost saved, the answering tiers, the
thresholds versions in use, the monitor's events, and the accepted-error rate of the audits.
``savings_fall`` flags a span whose savings fell by more than a fifth against the span before
it while the audited quality did not change: the silent collapse of issue 21, where a service
keeps answering but has stopped routing.

Everything here is pure (lists of dicts in, dicts out) except ``read_monitor_log``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from routenlp_ray.conformal.calibrator import wilson_interval

# The ``routing`` object's fields a benchmark keeps per request (serving/responses.py).
ROUTING_FIELDS = ("answered_by", "cost_usd", "frontier_cost_usd", "saved_usd", "thresholds_version", "fallback",
                  "escalations")
# Monitor events listed on a timeline: recalibrations, and every kind named ``threshold_*`` or ``audit_*``.
EVENT_PREFIXES = ("threshold_", "audit_")
# What a span's summary keeps of each event (the full events, changes included, are listed once per report).
EVENT_KEYS = ("t", "event", "reason", "before_version", "after_version", "tier", "task")
# A span's saved share falling by more than this, relative to the span it is compared with, is a fall.
MAX_RELATIVE_FALL = 0.2


def routing_fields(routing: dict[str, Any]) -> dict[str, Any]:
    """The per-request record of one response's ``routing`` object (absent fields stay absent)."""
    return {key: routing[key] for key in ROUTING_FIELDS if key in routing}


def finished_at(request: dict[str, Any]) -> float:
    """When a request finished, in the benchmark's seconds (``t`` is when it was sent)."""
    return float(request["t"]) + float(request.get("latency_ms", 0.0)) / 1000


def saved_share(requests: Iterable[dict[str, Any]]) -> float | None:
    """Sum saved over sum frontier cost of the answered requests; None when nothing had a frontier cost."""
    saved = frontier = 0.0
    for request in requests:
        if request.get("ok"):
            saved += float(request.get("saved_usd", 0.0))
            frontier += float(request.get("frontier_cost_usd", 0.0))
    return saved / frontier if frontier > 0 else None


def is_monitor_event(record: dict[str, Any]) -> bool:
    kind = str(record.get("event", ""))
    return kind == "recalibration" or kind.startswith(EVENT_PREFIXES)


def _epoch(record: dict[str, Any]) -> float | None:
    """A record's time as epoch seconds: its ``t`` if it has one, else its ISO 8601 ``ts``."""
    if isinstance(record.get("t"), (int, float)):
        return float(record["t"])
    ts = record.get("ts")
    if not ts:
        return None
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def on_timeline(records: Iterable[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """The records with ``t`` replaced by seconds since ``t0`` (epoch); those without a time are dropped.

    The record's own epoch ``t``, if any, is kept as ``epoch``.
    """
    placed = []
    for record in records:
        epoch = _epoch(record)
        if epoch is not None:
            placed.append({**{k: v for k, v in record.items() if k != "t"}, "epoch": epoch, "t": epoch - t0})
    return sorted(placed, key=lambda r: r["t"])


def event_summary(event: dict[str, Any]) -> dict[str, Any]:
    """An event as a report lists it: its kind, time, reason, versions before and after, and changes.

    Kinds are treated alike; every field beyond the id and the raw timestamps is kept.
    """
    summary = {k: v for k, v in event.items() if k not in ("id", "ts", "epoch")}
    summary["t"] = round(float(event["t"]), 2)
    for side in ("before", "after"):
        if isinstance(event.get(side), dict) and "thresholds_version" in event[side]:
            summary[f"{side}_version"] = event[side]["thresholds_version"]
    return summary


def read_monitor_log(log_uri: str, t0: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The monitor's events and audit labels in a query log, on the benchmark's timeline.

    A stream that is not there (an older monitor writes no ``labels``) reads as empty.
    """
    from routenlp_ray.telemetry.querylog import read_records

    events = [event_summary(e) for e in on_timeline(filter(is_monitor_event, read_records(log_uri, "events")), t0)]
    return events, on_timeline(read_records(log_uri, "labels"), t0)


def in_window(records: Iterable[dict[str, Any]], window: tuple[float, float], at: str = "t") -> list[dict[str, Any]]:
    lo, hi = window
    return [r for r in records if lo <= r[at] < hi]


def accepted_error(labels: Sequence[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Among audited answers the thresholds accepted, the share that were wrong, with its Wilson interval."""
    accepted = [label for label in labels if label.get("accepted")]
    wrong = sum(1 for label in accepted if not label.get("correct"))
    low, high = wilson_interval(wrong, len(accepted), confidence)
    return {
        "labelled": len(labels),
        "accepted": len(accepted),
        "accepted_wrong": wrong,
        "rate": wrong / len(accepted) if accepted else None,
        "ci95": None if math.isnan(low) else [low, high],
    }


def accepted_error_by(labels: Sequence[dict[str, Any]], keys: tuple[str, ...] = ("tier", "task")) -> dict[str, Any]:
    """``accepted_error`` per value of ``keys`` (joined by ``/``), for the cells that have labels."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for label in labels:
        cells.setdefault("/".join(str(label.get(k)) for k in keys), []).append(label)
    return {cell: accepted_error(rows) for cell, rows in sorted(cells.items())}


def span_summary(requests: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]],
                 events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Savings, answering tiers, thresholds versions, monitor events and audited quality of one span."""
    answered = [r for r in requests if r.get("ok")]
    return {
        "saved_share": saved_share(answered),
        "cost_usd": sum(float(r.get("cost_usd", 0.0)) for r in answered),
        "frontier_cost_usd": sum(float(r.get("frontier_cost_usd", 0.0)) for r in answered),
        "saved_usd": sum(float(r.get("saved_usd", 0.0)) for r in answered),
        "answered_by": dict(sorted(Counter(r["answered_by"] for r in answered if "answered_by" in r).items())),
        "thresholds_versions": dict(Counter(r["thresholds_version"] for r in answered if "thresholds_version" in r)),
        "events": [{k: e[k] for k in EVENT_KEYS if k in e} for e in events],
        "accepted_error": accepted_error(labels),
    }


def binned_saved_share(requests: Sequence[dict[str, Any]], width_s: float) -> list[dict[str, Any]]:
    """Saved share of the requests finishing in each ``width_s`` bin from 0, for a plot."""
    bins: dict[int, list[dict[str, Any]]] = {}
    for request in requests:
        bins.setdefault(int(finished_at(request) // width_s), []).append(request)
    return [{"t": (i + 0.5) * width_s, "n": len(rows), "saved_share": saved_share(rows)}
            for i, rows in sorted(bins.items()) if i >= 0]


@dataclass(frozen=True)
class SpanStats:
    """What ``savings_fall`` compares between two spans: the costs, and the audited accepted answers."""

    saved_usd: float
    frontier_cost_usd: float
    accepted: int
    accepted_wrong: int

    @classmethod
    def of(cls, requests: Iterable[dict[str, Any]], labels: Iterable[dict[str, Any]]) -> "SpanStats":
        answered = [r for r in requests if r.get("ok")]
        accepted = [label for label in labels if label.get("accepted")]
        return cls(
            saved_usd=sum(float(r.get("saved_usd", 0.0)) for r in answered),
            frontier_cost_usd=sum(float(r.get("frontier_cost_usd", 0.0)) for r in answered),
            accepted=len(accepted),
            accepted_wrong=sum(1 for label in accepted if not label.get("correct")),
        )

    @property
    def saved_share(self) -> float | None:
        return self.saved_usd / self.frontier_cost_usd if self.frontier_cost_usd > 0 else None


def savings_fall(before: SpanStats, after: SpanStats, max_relative_fall: float = MAX_RELATIVE_FALL,
                 confidence: float = 0.95) -> dict[str, Any]:
    """Did savings fall from ``before`` to ``after`` by more than ``max_relative_fall`` without a quality change?

    The quality signal is the audits' accepted-error rate. It "rose" only when the two spans'
    Wilson intervals at ``confidence`` are disjoint with ``after`` above; overlapping intervals, or
    a span without audited accepted answers, are no evidence of a change. ``flagged`` is a fall
    with no such rise: savings lost that quality does not explain.
    """
    share_before, share_after = before.saved_share, after.saved_share
    relative_fall = None
    if share_before is not None and share_before > 0 and share_after is not None:
        relative_fall = (share_before - share_after) / share_before
    fell = relative_fall is not None and relative_fall > max_relative_fall
    ci_before = wilson_interval(before.accepted_wrong, before.accepted, confidence)
    ci_after = wilson_interval(after.accepted_wrong, after.accepted, confidence)
    quality_rose = bool(before.accepted and after.accepted and ci_after[0] > ci_before[1])
    return {
        "saved_share_before": share_before,
        "saved_share_after": share_after,
        "relative_fall": relative_fall,
        "fell": fell,
        "accepted_error_before": before.accepted_wrong / before.accepted if before.accepted else None,
        "accepted_error_after": after.accepted_wrong / after.accepted if after.accepted else None,
        "accepted_error_ci_before": None if not before.accepted else list(ci_before),
        "accepted_error_ci_after": None if not after.accepted else list(ci_after),
        "quality_rose": quality_rose,
        "flagged": fell and not quality_rose,
    }


def phase_savings_flags(requests: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]],
                        windows: Sequence[tuple[str, float, float]],
                        max_relative_fall: float = MAX_RELATIVE_FALL) -> list[dict[str, Any]]:
    """Per phase (``(name, start, end)`` in seconds), the two savings checks and whether either flags it.

    ``vs_previous`` compares the phase with the one before; ``within`` compares its last third
    with its first third. Requests belong to a phase by their ``phase`` field, and to a third
    (and labels to a phase or third) by their time ``t``.
    """
    flags = []
    previous: SpanStats | None = None
    for name, start, end in windows:
        mine = [r for r in requests if r.get("phase") == name]
        stats = SpanStats.of(mine, in_window(labels, (start, end)))
        third = (end - start) / 3
        first = SpanStats.of(in_window(mine, (start, start + third)), in_window(labels, (start, start + third)))
        last = SpanStats.of(in_window(mine, (end - third, end)), in_window(labels, (end - third, end)))
        checks = {
            "vs_previous": None if previous is None else savings_fall(previous, stats, max_relative_fall),
            "within": savings_fall(first, last, max_relative_fall),
        }
        flags.append({
            "phase": name,
            "flagged": any(c is not None and c["flagged"] for c in checks.values()),
            **checks,
        })
        previous = stats
    return flags


def flag_sentence(flag: dict[str, Any]) -> str:
    """One line saying why a phase is flagged (empty when it is not)."""
    if not flag["flagged"]:
        return ""
    parts = []
    for name, label in (("vs_previous", "against the phase before"), ("within", "from its first third to its last")):
        check = flag.get(name)
        if check and check["flagged"]:
            before, after = check["accepted_error_before"], check["accepted_error_after"]
            quality = ("no audited accepted answers to compare" if before is None or after is None
                       else f"accepted-error rate {before:.1%} -> {after:.1%}, not a significant rise")
            parts.append(f"saved share {check['saved_share_before']:.1%} -> {check['saved_share_after']:.1%} "
                         f"{label} ({quality})")
    return f"**Flagged: savings fell without a quality change in phase {flag['phase']}:** " + "; ".join(parts) + "."


def percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}%}"


def accepted_error_cell(summary: dict[str, Any]) -> str:
    """``accepted_error``'s result as a table cell: wrong/accepted, the rate and its interval."""
    if not summary["accepted"]:
        return f"no accepted audits ({summary['labelled']} labelled)" if summary["labelled"] else "no audits"
    low, high = summary["ci95"]
    return (f"{summary['accepted_wrong']}/{summary['accepted']} ({percent(summary['rate'])}, "
            f"95% CI {percent(low)}-{percent(high)})")


def span_cells(span: dict[str, Any]) -> dict[str, str]:
    """``span_summary``'s result as table cells: saved share, tiers, thresholds versions, events, audits."""
    return {
        "saved_share": percent(span["saved_share"]),
        "answered_by": str(span["answered_by"]),
        "versions": ", ".join(f"`{v}` {n}" for v, n in span["thresholds_versions"].items()) or "-",
        "events": ", ".join(f"{e['event']} t={e['t']:.0f}s" for e in span["events"]) or "-",
        "accepted_error": accepted_error_cell(span["accepted_error"]),
    }


def event_line(event: dict[str, Any]) -> str:
    """A monitor event as one Markdown list item: time, kind, reason, versions, and every change."""
    head = f"- t={event['t']:.1f} s: **{event.get('event')}**"
    if event.get("reason"):
        head += f" ({event['reason']})"
    if "before_version" in event or "after_version" in event:
        head += f", `{event.get('before_version')}` -> `{event.get('after_version')}`"
    shown = {"t", "event", "reason", "before", "after", "before_version", "after_version", "changes", "artifact"}
    extra = {k: v for k, v in event.items() if k not in shown}
    if extra:
        head += ", " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(extra.items()))
    changes = event.get("changes") or []
    lines = [head + (f"; {len(changes)} change(s):" if changes else "")]
    lines += [f"  - `{json.dumps(change, sort_keys=True)}`" for change in changes]
    return "\n".join(lines)


def draw_events(axes: Sequence[Any], events: Sequence[dict[str, Any]], label_axis: Any) -> None:
    """Vertical markers on ``axes`` at each monitor event: recalibrations solid purple, other kinds dashed orange.

    Each is named on ``label_axis``, rotated along its line.
    """
    for event in events:
        recalibration = event.get("event") == "recalibration"
        color, style = ("purple", "-") if recalibration else ("darkorange", "--")
        for axis in axes:
            axis.axvline(event["t"], color=color, linestyle=style, linewidth=0.9)
        low, high = label_axis.get_ylim()
        label_axis.text(event["t"], low + 0.95 * (high - low), str(event.get("event")), fontsize=6, color=color,
                        rotation=90, va="top", ha="right")


def shade_if_flagged(axis: Any, summary: dict[str, Any], start: float, end: float) -> None:
    """Shade a phase whose savings check flagged it, from ``start`` to ``end`` on ``axis``."""
    if (summary.get("savings_flag") or {}).get("flagged"):
        axis.axvspan(start, end, color="red", alpha=0.08)
        axis.text((start + end) / 2, 0.5, "savings fell,\nquality did not", ha="center", va="center", fontsize=8,
                  color="firebrick", transform=axis.get_xaxis_transform())
