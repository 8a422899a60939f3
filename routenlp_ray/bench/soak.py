"""``routenlp bench soak``: steady mixed traffic for many minutes, with live recalibration on.

The embedded default runs with its coverage monitor, audits and live recalibration, and a few
clients send validation queries of four tasks the replay frontier knows for ``minutes``. The
run is split into phases by a plan: by default ``steady`` for the first half and ``drift`` for
the second. A drift phase sends the same mix except that one task's share of the traffic is
replaced by rows the shipped thresholds never saw (by default legal_clause rows of the train
split, from a seeded half of its labels: a shift in both the rows and the label mix). The
report says exactly what the drift was.

Per minute the report gives the requests, the share of frontier cost saved, the answering
tiers, the thresholds versions in use and the audits' accepted-error rate (overall and per
tier and task, from the query log's ``labels`` stream); every recalibration and threshold or
audit event is listed with its time and changes. The traffic loop, the app start and the
per-phase savings checks are ``bench load``'s (``bench/load.py``, ``bench/savings.py``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.bench.load import (
    Phase,
    bench_config,
    phase_windows,
    request_body,
    run_phases,
    savings_markdown,
    serve_ready,
    summarize_phases,
    task_rows,
)
from routenlp_ray.bench.report import write_report
from routenlp_ray.bench.savings import (
    accepted_error,
    accepted_error_by,
    accepted_error_cell,
    draw_events,
    finished_at,
    in_window,
    percent,
    read_monitor_log,
    saved_share,
    shade_if_flagged,
    span_cells,
    span_summary,
)
from routenlp_ray.bench.serving import ServingApps, local_serve
from routenlp_ray.config.app import load_config

# The tasks of the mixed traffic: those whose validation answers the replay frontier has.
DEFAULT_TASKS = ("cs_intent", "legal_risk", "legal_clause", "fin_ner")
# Phase kinds and the default plan: (kind, share of the run).
PHASE_KINDS = ("steady", "drift")
DEFAULT_PLAN: tuple[tuple[str, float], ...] = (("steady", 0.5), ("drift", 0.5))
APP, PREFIX = "bench-soak", "/soak"
MINUTE_S = 60.0
# In the embedded default the specialist tier was distilled on the train splits; the thresholds on validation.
TRAIN_SPLIT_NOTE = ("the shipped thresholds were calibrated on the validation split and never saw these rows; "
                    "the embedded default's specialist tier was distilled on the train splits, so the model "
                    "has seen them: the shift is in the calibration data and the label mix, not new contracts")


@dataclass(frozen=True)
class DriftSpec:
    """Which rows replace ``task``'s share of the traffic in a drift phase.

    Rows of ``task``'s ``split`` whose ``reference`` is among ``labels`` when given, else among
    ``labels_share`` of its distinct references, picked with ``seed``.
    """

    task: str = "legal_clause"
    split: str = "train"
    labels_share: float = 0.5
    seed: int = 0
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.labels_share <= 1:
            raise ValueError(f"drift labels_share must be in (0, 1], got {self.labels_share}")


def parse_phase_plan(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """``["steady=0.5", "drift=0.5"]`` as ``(("steady", 0.5), ("drift", 0.5))``; shares are relative."""
    plan = []
    for item in items:
        kind, _, share = item.partition("=")
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"a phase is KIND=SHARE, got {item!r}") from None
        if kind not in PHASE_KINDS or not value > 0:
            raise ValueError(f"a phase is KIND=SHARE with KIND in {list(PHASE_KINDS)} and SHARE > 0, got {item!r}")
        plan.append((kind, value))
    if not plan:
        raise ValueError("the phase plan is empty")
    return tuple(plan)


def soak_phases(minutes: float, plan: Sequence[tuple[str, float]], clients: int, pause_s: float) -> tuple[Phase, ...]:
    """The plan's phases over ``minutes``, each named by its kind (``drift-2`` for the second drift)."""
    total = sum(share for _, share in plan)
    seen: dict[str, int] = {}
    phases = []
    for kind, share in plan:
        seen[kind] = seen.get(kind, 0) + 1
        name = kind if seen[kind] == 1 else f"{kind}-{seen[kind]}"
        phases.append(Phase(name, minutes * MINUTE_S * share / total, clients, pause_s))
    return tuple(phases)


def phase_kind(name: str) -> str:
    return name.split("-", 1)[0]


def drift_traffic(base: Sequence[dict[str, Any]], pool: Sequence[dict[str, Any]],
                  spec: DriftSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``base`` with each row of ``spec.task`` replaced, in turn, by a row of ``pool`` from the chosen labels.

    The task mix and order of ``base`` stay; only what ``spec.task``'s queries are changes. The
    second value says exactly what the drift was.
    """
    labels = sorted({str(row["reference"]) for row in pool if row["task"] == spec.task})
    if not labels:
        raise ValueError(f"no {spec.task!r} rows in the drift pool ({spec.split} split)")
    if spec.labels is not None:
        unknown = sorted(set(spec.labels) - set(labels))
        if unknown:
            raise ValueError(f"drift labels {unknown} have no {spec.task!r} rows in the {spec.split} split")
        chosen = sorted(spec.labels)
    else:
        keep = max(1, round(spec.labels_share * len(labels)))
        chosen = sorted(labels[i] for i in np.random.default_rng(spec.seed).permutation(len(labels))[:keep])
    drifted = [row for row in pool if row["task"] == spec.task and str(row["reference"]) in set(chosen)]
    slots = [i for i, row in enumerate(base) if row["task"] == spec.task]
    if not slots:
        raise ValueError(f"the drift task {spec.task!r} has no share of the traffic to replace "
                         f"(tasks: {sorted({r['task'] for r in base})})")
    rows = list(base)
    for n, i in enumerate(slots):
        rows[i] = drifted[n % len(drifted)]
    info = {
        **asdict(spec),
        "labels": chosen,
        "labels_total": len(labels),
        "rows_available": len(drifted),
        "traffic_share": len(slots) / len(base),
        "description": (
            f"the {spec.task} share of the traffic ({len(slots) / len(base):.0%} of the rows) replaced by "
            f"{len(drifted)} {spec.task} rows of the {spec.split} split whose label is one of {len(chosen)} of its "
            f"{len(labels)} labels ({'named' if spec.labels is not None else f'seed {spec.seed}'}); the other tasks' "
            "rows are unchanged"
            + (f"; {TRAIN_SPLIT_NOTE}" if spec.split == "train" else "")
        ),
    }
    return rows, info


def per_minute(requests: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]],
               events: Sequence[dict[str, Any]], windows: Sequence[tuple[str, float, float]],
               minute_s: float = MINUTE_S) -> list[dict[str, Any]]:
    """One row per minute of the run: requests finishing in it, their savings and tiers, audits and events.

    ``windows`` are the phases' ``(name, start, end)``; a minute belongs to the phase it starts in.
    """
    end = max((w[2] for w in windows), default=0.0)
    rows = []
    for minute in range(math.ceil(end / minute_s)):
        window = (minute * minute_s, (minute + 1) * minute_s)
        mine = [r for r in requests if window[0] <= finished_at(r) < window[1]]
        audits = in_window(labels, window)
        rows.append({
            "minute": minute,
            "phase": next((name for name, lo, hi in windows if lo <= window[0] < hi), None),
            "requests": len(mine),
            "errors": sum(1 for r in mine if not r.get("ok")),
            **span_summary(mine, audits, in_window(events, window)),
            "accepted_error_by_cell": accepted_error_by(audits),
        })
    return rows


def run_soak_benchmark(
    config_path: str, data_dir: str, out: str, apps: ServingApps, minutes: float = 16.0, clients: int = 4,
    pause_s: float = 0.1, tasks: tuple[str, ...] = DEFAULT_TASKS, plan: Sequence[tuple[str, float]] = DEFAULT_PLAN,
    drift: DriftSpec | None = None, audit_rate: float | None = None, progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Soak the embedded default; write ``out`` (JSON) and ``.md``/``.png`` beside it.

    ``audit_rate`` overrides the config's monitor audit rate; the monitor is switched on either way.
    """
    from ray import serve

    drift = drift or DriftSpec()
    config = load_config(config_path).with_absolute_paths(Path.cwd())
    phases = soak_phases(minutes, plan, clients, pause_s)
    steady = task_rows(data_dir, tasks)
    drifted, drift_info = drift_traffic(steady, task_rows(data_dir, (drift.task,), drift.split, drift.seed), drift)
    traffic = {"steady": steady, "drift": drifted}
    bodies = {p.name: [request_body(r) for r in traffic[phase_kind(p.name)]] for p in phases}
    monitoring = {"enabled": True, **({} if audit_rate is None else {"audit_rate": audit_rate})}
    with local_serve("routenlp-bench-soak-") as (port, work_dir):
        soak_config = bench_config(config, work_dir, {}, monitoring)
        base = serve_ready(apps, soak_config, port, bodies[phases[0].name][:16], APP, PREFIX)
        progress(f"soak: {minutes:g} min, {clients} clients, phases "
                 f"{', '.join(f'{p.name} {p.duration_s:.0f}s' for p in phases)}; drift: {drift_info['description']}")
        t0 = time.time()
        requests, _, attempts = asyncio.run(run_phases(f"{base}/v1", bodies, phases, t0))
        serve.delete(APP)
        events, labels = read_monitor_log(str(work_dir / "load-log"), t0)
    answered = [r for r in requests if r["ok"]]
    body = {
        "benchmark": "soak",
        "config": config_path,
        "tasks": list(tasks),
        "minutes": minutes,
        "clients": clients,
        "pause_s": pause_s,
        "client": "openai.AsyncOpenAI, default retries (2)",
        "monitoring": soak_config.monitoring.model_dump(mode="json", exclude={"artifacts_dir"}),
        "traffic": {kind: dict(sorted(Counter(r["task"] for r in rows).items())) for kind, rows in traffic.items()},
        "drift": drift_info,
        "totals": {
            "requests": len(requests), "errors": len(requests) - len(answered),
            "saved_share": saved_share(answered), "audit_labels": len(labels),
            "accepted_error": accepted_error(labels),
        },
        "http_attempts": attempts,
        "phases": summarize_phases(phases, requests, [], labels, events),
        "per_minute": per_minute(requests, labels, events, phase_windows(phases)),
        "monitor_events": events,
        "audit_labels": len(labels),
    }
    figure = Path(out).with_suffix(".png").name
    return write_report(out, body, markdown=lambda report: soak_markdown(report, figure), figures={".png": plot_soak})


def soak_markdown(report: dict[str, Any], figure: str) -> str:
    """The report as Markdown; ``figure`` is the file name of its per-minute PNG, linked at the end."""
    monitoring, totals, drift = report["monitoring"], report["totals"], report["drift"]
    lines = [
        "# Soak benchmark: savings and audited quality per minute, with live recalibration",
        "",
        f"{report['created_at'][:19]} UTC, {report['machine']['cpus']} CPUs, config `{report['config']}`, "
        f"{report['minutes']:g} minutes, {report['clients']} clients pausing {report['pause_s']:g} s between "
        f"requests ({report['client']}).",
        f"Monitor: audit rate {monitoring['audit_rate']:g}, method `{monitoring['method']}`, settings "
        f"`{json.dumps({k: v for k, v in monitoring.items() if k not in ('audit_rate', 'method', 'resources')})}`.",
        "",
        "Traffic: validation queries of " + ", ".join(report["tasks"]) + ", shuffled once and sent in turn; rows "
        "per task: " + "; ".join(f"{kind} " + ", ".join(f"{task} {n}" for task, n in counts.items())
                                 for kind, counts in report["traffic"].items()) + ".",
        f"**Drift phases:** {drift['description']}. Labels drawn: {', '.join(drift['labels'])}.",
        "",
        f"Over the run: {totals['requests']} requests, {totals['errors']} errors, saved "
        f"{percent(totals['saved_share'])} of frontier cost; audits: {totals['audit_labels']} labels, accepted-error "
        f"{accepted_error_cell(totals['accepted_error'])}.",
        "",
        "## Per minute",
        "",
        "| min | phase | requests | errors | saved share | answered by | accepted-error (audits) "
        "| per tier/task | thresholds versions | events |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["per_minute"]:
        by_cell = "; ".join(f"{cell} {percent(e['rate'])} ({e['accepted_wrong']}/{e['accepted']})"
                            for cell, e in row["accepted_error_by_cell"].items() if e["accepted"]) or "-"
        cells = span_cells(row)
        lines.append(
            f"| {row['minute']} | {row['phase']} | {row['requests']} | {row['errors']} | {cells['saved_share']} | "
            f"{cells['answered_by']} | {cells['accepted_error']} | {by_cell} | {cells['versions']} | "
            f"{cells['events']} |"
        )
    lines += ["", *savings_markdown(report), f"![saved share and accepted-error per minute]({figure})", ""]
    return "\n".join(lines)


def plot_soak(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["per_minute"]
    fig, (savings, errors) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    shares = [r for r in rows if r["saved_share"] is not None]
    savings.plot([r["minute"] + 0.5 for r in shares], [r["saved_share"] for r in shares], marker="o", color="green",
                 label="saved share of frontier cost")
    savings.set_ylim(-0.05, 1.05)
    savings.set_ylabel("saved share")
    savings.legend(loc="lower left", fontsize=8)
    audited = [r for r in rows if r["accepted_error"]["rate"] is not None]
    if audited:
        rates = np.array([r["accepted_error"]["rate"] for r in audited])
        ci = np.array([r["accepted_error"]["ci95"] for r in audited])
        errors.errorbar([r["minute"] + 0.5 for r in audited], rates, yerr=[rates - ci[:, 0], ci[:, 1] - rates],
                        marker="o", color="firebrick", capsize=3, label="accepted-error rate of audits (95% CI)")
        errors.legend(loc="upper left", fontsize=8)
    errors.set_ylim(bottom=0)
    errors.set_ylabel("accepted-error rate")
    errors.set_xlabel("minutes since the first phase began")
    start = 0.0
    for summary in report["phases"]:
        for axis in (savings, errors):
            axis.axvline(start / MINUTE_S, color="grey", linestyle=":", linewidth=1)
        savings.text(start / MINUTE_S, 1.01, summary["phase"]["name"], fontsize=8, va="bottom",
                     transform=savings.get_xaxis_transform())
        shade_if_flagged(savings, summary, start / MINUTE_S, (start + summary["phase"]["duration_s"]) / MINUTE_S)
        start += summary["phase"]["duration_s"]
    draw_events((savings, errors), [{**e, "t": e["t"] / MINUTE_S} for e in report["monitor_events"]], savings)
    fig.suptitle("routenlp bench soak: saved share and audited accepted-error per minute\n"
                 "(purple: recalibrations; orange: other threshold and audit events; dotted: phase boundaries)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
