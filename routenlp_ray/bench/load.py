"""``routenlp bench load``: the whole embedded default under phased traffic, with replica kills.

Traffic comes in phases (light, then heavy, then light again) from the official ``openai``
client with its default retries, so an error here is what a user would see. Every second the
benchmark samples each deployment's running replicas from ``serve.status()``, so the report
shows a tier scaling up under load and back down after. In each phase one replica is
SIGKILLed (a router, a tier, the coverage monitor).

Throughput from a service that has stopped routing measures the frontier tier, not the product,
so savings are reported beside latency: per phase the share of frontier cost saved, the
answering tiers, the thresholds versions in use, the monitor's recalibrations and other events
(read from the query log's ``events`` stream after the run) and the audits' accepted-error rate
(its ``labels`` stream). A phase whose savings fell by more than a fifth without a significant
rise in that error rate is flagged (``bench/savings.py``).

The tier that autoscales is given quick settings (small ``target_ongoing_requests``, short
delays, one-second load reports) so the whole cycle fits in a few minutes on a laptop; they
are written into the report. Scratch space and the query log live in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.bench.report import write_report
from routenlp_ray.bench.savings import (
    binned_saved_share,
    draw_events,
    event_line,
    flag_sentence,
    in_window,
    phase_savings_flags,
    read_monitor_log,
    routing_fields,
    shade_if_flagged,
    span_cells,
    span_summary,
)
from routenlp_ray.bench.serving import ServingApps, local_serve
from routenlp_ray.config.app import RouteNLPConfig, load_config


@dataclass(frozen=True)
class Phase:
    """``clients`` users for ``duration_s``, each pausing ``pause_s`` between requests.

    ``kill`` names a deployment one replica of which is SIGKILLed at ``kill_at`` of the phase.
    """

    name: str
    duration_s: float
    clients: int
    pause_s: float
    kill: str | None = None
    kill_at: float = 0.5


# The specialist replica dies late in the heavy phase, once autoscaling has given it a second one.
DEFAULT_PHASES = (
    Phase("light-before", 30.0, 1, 0.5, kill="router"),
    Phase("load", 90.0, 16, 0.0, kill="tier-specialist", kill_at=0.8),
    Phase("light-after", 120.0, 1, 0.5, kill="coverage-monitor", kill_at=0.25),
)
# Quick autoscaling for the tier that should visibly scale (the defaults wait minutes to scale down).
BENCH_AUTOSCALING = {
    "specialist": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 0.5,
                   "upscale_delay_s": 2.0, "downscale_delay_s": 20.0},
}
# Replicas and handles report their load every 10 s by default; once a second shows the cycle sooner.
LOAD_REPORT_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}
APP, PREFIX = "bench-load", "/load"
# The plot's saved share is of the requests finishing in each bin of this many seconds.
SAVED_SHARE_BIN_S = 5.0


def phase_windows(phases: Sequence[Phase]) -> list[tuple[str, float, float]]:
    """Each phase's name, start and end in seconds since the first began."""
    edges = np.cumsum([0.0] + [p.duration_s for p in phases])
    return [(p.name, float(edges[i]), float(edges[i + 1])) for i, p in enumerate(phases)]


def bench_config(config: RouteNLPConfig, work_dir: Path, autoscaling: dict[str, dict[str, Any]],
                 monitoring: dict[str, Any] | None = None) -> RouteNLPConfig:
    """``config`` with its query log and live thresholds in ``work_dir``, ``autoscaling`` merged into the
    named tiers' settings and ``monitoring`` into the monitor's (for example ``{"audit_rate": 0.2}``)."""
    data = config.model_dump(mode="json")
    data["storage"] = {"log_uri": str(work_dir / "load-log"), "spool_dir": str(work_dir / "load-spool")}
    data["monitoring"] = {**data["monitoring"], **(monitoring or {}),
                          "artifacts_dir": str(work_dir / "load-thresholds")}
    for tier in data["tiers"]:
        if tier["name"] in autoscaling:
            tier["autoscaling"] = {**tier["autoscaling"], **autoscaling[tier["name"]]}
    return RouteNLPConfig.model_validate(data)


def replica_counts(app: str = APP) -> dict[str, int]:
    """Running replicas per deployment of ``app``."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in status.deployments.items()}


def kill_one_replica(deployment: str, app: str = APP) -> int | None:
    """SIGKILL one serving replica of ``deployment``; its pid, or None if none was found.

    A replica actor exists before its ``__init__`` has run, so the one killed is picked among
    those Serve has initialised (a private flag of Serve's replica actor: this is a benchmark).
    """
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"{app}#{deployment}#" in actor["name"]:
            try:
                handle = ray.get_actor(actor["name"], namespace="serve")
                pid, serving = ray.get(handle.__ray_call__.remote(
                    lambda self: (os.getpid(), self._replica_impl._user_callable_initialized)), timeout=10)
            except Exception:  # a replica already on its way out
                continue
            if serving:
                os.kill(pid, signal.SIGKILL)
                return int(pid)
    return None


class _ReplicaSampler:
    """Samples ``replica_counts`` every ``interval_s`` on a thread, stamped relative to ``t0``."""

    def __init__(self, t0: float, interval_s: float = 1.0) -> None:
        self.t0, self.interval_s = t0, interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_ReplicaSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append({"t": time.time() - self.t0, "replicas": replica_counts()})
            except Exception:  # the controller busy for a moment: skip the sample
                pass
            self._stop.wait(self.interval_s)


def _counting_transport() -> Any:
    import httpx

    class CountingTransport(httpx.AsyncHTTPTransport):
        """Counts HTTP attempts, and those that failed (5xx or no response) and the client retried."""

        def __init__(self) -> None:
            super().__init__(limits=httpx.Limits(max_connections=64))
            self.attempts = 0
            self.failed = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.attempts += 1
            try:
                response = await super().handle_async_request(request)
            except Exception:
                self.failed += 1
                raise
            if response.status_code >= 500:
                self.failed += 1
            return response

    return CountingTransport()


async def run_phases(
    base_url: str, bodies: Mapping[str, Sequence[dict[str, Any]]], phases: tuple[Phase, ...], t0: float,
    kill: Callable[[str], int | None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Each phase's clients send its ``bodies`` (by phase name) in turn; every request's outcome is recorded.

    A record has the phase, the send time ``t`` (seconds since ``t0``), the task, the latency and
    either the ``routing`` object's answering tier, costs and thresholds version or the error.
    """
    import httpx
    import openai

    transport = _counting_transport()
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", timeout=120,
                                http_client=httpx.AsyncClient(transport=transport, timeout=120))
    requests: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []
    cursor = 0

    async def user(phase: Phase, until: float) -> None:
        nonlocal cursor
        mine = bodies[phase.name]
        while time.time() < until:
            body = mine[cursor % len(mine)]
            cursor += 1
            started = time.time()
            record: dict[str, Any] = {"phase": phase.name, "t": started - t0, "task": body["model"].split("/", 1)[-1]}
            try:
                response = await client.chat.completions.create(**body)
                record.update(ok=True, **routing_fields((response.model_extra or {})["routing"]))
            except openai.OpenAIError as exc:
                record.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            record["latency_ms"] = (time.time() - started) * 1000
            requests.append(record)
            if phase.pause_s:
                await asyncio.sleep(phase.pause_s)

    async def killer(phase: Phase, at: float, kill: Callable[[str], int | None]) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        pid = await asyncio.to_thread(kill, phase.kill or "")
        kills.append({"phase": phase.name, "deployment": phase.kill, "pid": pid, "t": time.time() - t0})

    try:
        for phase in phases:
            start = time.time()
            until = start + phase.duration_s
            tasks = [user(phase, until) for _ in range(phase.clients)]
            if phase.kill and kill is not None:
                tasks.append(killer(phase, start + phase.duration_s * phase.kill_at, kill))
            await asyncio.gather(*tasks)
    finally:
        await client.close()
    return requests, kills, {"attempts": transport.attempts, "failed_and_retried": transport.failed}


def _phase_summary(phase: Phase, requests: list[dict[str, Any]], samples: list[dict[str, Any]],
                   window: tuple[float, float], labels: Sequence[dict[str, Any]] = (),
                   events: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    mine = [r for r in requests if r["phase"] == phase.name]
    ok = [r["latency_ms"] for r in mine if r["ok"]]
    answered = [r["answered_by"] for r in mine if r["ok"]]
    sampled = [s["replicas"] for s in samples if window[0] <= s["t"] < window[1]]
    deployments = sorted({d for s in sampled for d in s})
    return {
        "phase": asdict(phase),
        "requests": len(mine),
        "answered": len(ok),
        "errors": len(mine) - len(ok),
        "error_examples": [r["error"] for r in mine if not r["ok"]][:3],
        "throughput_rps": len(ok) / phase.duration_s,
        "latency_ms": {
            "p50": float(np.percentile(ok, 50)), "p95": float(np.percentile(ok, 95)),
            "p99": float(np.percentile(ok, 99)), "mean": float(np.mean(ok)),
        } if ok else None,
        "answered_by": {t: answered.count(t) for t in sorted(set(answered))},
        "replicas": {d: {"min": min(s.get(d, 0) for s in sampled), "max": max(s.get(d, 0) for s in sampled)}
                     for d in deployments},
        "savings": span_summary(mine, in_window(labels, window), in_window(events, window)),
    }


def summarize_phases(phases: Sequence[Phase], requests: list[dict[str, Any]], samples: list[dict[str, Any]],
                     labels: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``_phase_summary`` of each phase, with its savings check (``savings_flag``)."""
    windows = phase_windows(phases)
    summaries = [_phase_summary(p, requests, samples, (start, end), labels, events)
                 for p, (_, start, end) in zip(phases, windows)]
    for summary, flag in zip(summaries, phase_savings_flags(requests, labels, windows)):
        summary["savings_flag"] = flag
    return summaries


def task_rows(data_dir: str | Path, tasks: Sequence[str], split: str = "validation",
              seed: int = 0) -> list[dict[str, Any]]:
    """Every row of ``<data_dir>/<task>/<split>.jsonl`` for ``tasks``, in one seeded shuffle."""
    rows = [json.loads(line) for task in tasks for line in (Path(data_dir) / task / f"{split}.jsonl").open()]
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def request_body(row: dict[str, Any], max_tokens: int = 16) -> dict[str, Any]:
    """The chat request that sends a data-set row's input to its task's model."""
    return {"model": f"routenlp/{row['task']}", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": row["input"]}]}


def serve_ready(apps: ServingApps, config: RouteNLPConfig, port: int, warmup: Sequence[dict[str, Any]],
                app: str = APP, prefix: str = PREFIX) -> str:
    """Deploy ``config`` as ``app``, wait until it is ready and send ``warmup`` (not counted); its base URL."""
    import httpx
    from ray import serve

    serve.run(apps.router(config), name=app, route_prefix=prefix)
    base = f"http://127.0.0.1:{port}{prefix}"
    deadline = time.time() + 300
    while httpx.get(f"{base}/readyz", timeout=30).status_code != 200:
        if time.time() > deadline:
            raise TimeoutError("the application did not become ready within 300 s")
        time.sleep(1)
    for body in warmup:  # first-call caches, connections
        httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    return base


def run_phased_load_benchmark(
    config_path: str, data_dir: str, out: str, apps: ServingApps, phases: tuple[Phase, ...] = DEFAULT_PHASES,
    autoscaling: dict[str, dict[str, Any]] | None = None, tasks: tuple[str, ...] = ("cs_intent", "legal_risk"),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the phases against the embedded default; write ``out`` (JSON) and ``.md``/``.png`` beside it."""
    from ray import serve

    autoscaling = BENCH_AUTOSCALING if autoscaling is None else autoscaling
    os.environ.update(LOAD_REPORT_ENV)  # before Ray starts, so every replica and handle inherits it
    config = load_config(config_path).with_absolute_paths(Path.cwd())
    bodies = [request_body(r) for r in task_rows(data_dir, tasks)]
    with local_serve("routenlp-bench-load-") as (port, work_dir):
        base = serve_ready(apps, bench_config(config, work_dir, autoscaling), port, bodies[:16])
        progress(f"phases: {', '.join(f'{p.name} {p.duration_s:.0f}s x{p.clients}' for p in phases)}")
        t0 = time.time()
        with _ReplicaSampler(t0) as sampler:
            requests, kills, attempts = asyncio.run(
                run_phases(f"{base}/v1", {p.name: bodies for p in phases}, phases, t0, kill_one_replica))
        samples = sampler.samples
        serve.delete(APP)
        events, labels = read_monitor_log(str(work_dir / "load-log"), t0)
    summaries = summarize_phases(phases, requests, samples, labels, events)
    body = {
        "benchmark": "load",
        "config": config_path,
        "tasks": list(tasks),
        "client": "openai.AsyncOpenAI, default retries (2)",
        "autoscaling_override": autoscaling,
        "environment": LOAD_REPORT_ENV,
        "phases": summaries,
        "kills": kills,
        "http_attempts": attempts,
        "monitor_events": events,
        "audit_labels": len(labels),
        # Milliseconds and hundredths of a second are all the plot needs; the file stays small.
        "timeline": {
            "replicas": [{"t": round(s["t"], 2), "replicas": s["replicas"]} for s in samples],
            "requests": [{"t": round(r["t"], 2), "phase": r["phase"], "ok": r["ok"], "latency_ms": round(r["latency_ms"], 1)}
                         for r in requests],
            "saved_share": binned_saved_share(requests, SAVED_SHARE_BIN_S),
        },
    }
    figure = Path(out).with_suffix(".png").name
    return write_report(out, body, markdown=lambda report: load_markdown(report, figure), figures={".png": plot_timeline})


def load_markdown(report: dict[str, Any], figure: str) -> str:
    """The report as Markdown; ``figure`` is the file name of its timeline PNG, linked at the end."""
    lines = [
        "# Load benchmark: phases, autoscaling and replica kills",
        "",
        f"{report['created_at'][:19]} UTC, {report['machine']['cpus']} CPUs, config `{report['config']}`, "
        f"queries of {', '.join(report['tasks'])} (validation), client: {report['client']}.",
        f"Autoscaling override: `{json.dumps(report['autoscaling_override'])}`; load reports every "
        f"{report['environment']['RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S']} s.",
        "",
        "| phase | clients | s | answered | errors | req/s | p50 ms | p95 ms | p99 ms | killed | replicas (min-max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in report["phases"]:
        phase, lat = summary["phase"], summary["latency_ms"] or {}
        kill = next((k for k in report["kills"] if k["phase"] == phase["name"]), None)
        killed = f"{kill['deployment']} (pid {kill['pid']}, t={kill['t']:.0f}s)" if kill else "-"
        replicas = ", ".join(f"{d} {r['min']}-{r['max']}" for d, r in summary["replicas"].items())
        lines.append(
            f"| {phase['name']} | {phase['clients']} | {phase['duration_s']:.0f} | {summary['answered']} | "
            f"{summary['errors']} | {summary['throughput_rps']:.1f} | {lat.get('p50', float('nan')):.0f} | "
            f"{lat.get('p95', float('nan')):.0f} | {lat.get('p99', float('nan')):.0f} | {killed} | {replicas} |"
        )
    attempts = report["http_attempts"]
    lines += [
        "",
        f"HTTP attempts: {attempts['attempts']}, of which {attempts['failed_and_retried']} failed (5xx or no "
        "response) and were retried by the client. Answering tiers per phase: "
        + "; ".join(f"{s['phase']['name']} {s['answered_by']}" for s in report["phases"]) + ".",
        "",
        *savings_markdown(report),
        f"![replicas, latency and saved share over time]({figure})",
        "",
    ]
    return "\n".join(lines)


def savings_markdown(report: dict[str, Any]) -> list[str]:
    """The savings section: per phase the saved share, tiers, thresholds versions, monitor events and audits."""
    lines = [
        "## Savings per phase",
        "",
        "Saved share = saved / frontier-only cost of the answered requests (the `routing` object's `saved_usd` "
        "and `frontier_cost_usd`). Accepted-error = audited cheap-tier answers the thresholds accepted that were "
        f"wrong, from the monitor's `labels` stream ({report.get('audit_labels', 0)} labels in this run). A phase "
        "is flagged when its saved share fell by more than a fifth (against the phase before, or from its first "
        "third to its last) while the accepted-error rate did not rise significantly (95% Wilson intervals).",
        "",
        "| phase | saved share | cost USD | frontier-only USD | answered by | thresholds versions | monitor events "
        "| accepted-error (audits) | flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in report["phases"]:
        savings, flag = summary["savings"], summary.get("savings_flag") or {"flagged": False}
        cells = span_cells(savings)
        lines.append(
            f"| {summary['phase']['name']} | {cells['saved_share']} | {savings['cost_usd']:.4f} | "
            f"{savings['frontier_cost_usd']:.4f} | {cells['answered_by']} | {cells['versions']} | {cells['events']} | "
            f"{cells['accepted_error']} | {'**yes**' if flag['flagged'] else 'no'} |"
        )
    flagged = [flag_sentence(s["savings_flag"]) for s in report["phases"] if s.get("savings_flag", {}).get("flagged")]
    lines += ["", *flagged, *([""] if flagged else [])]
    events = report.get("monitor_events", [])
    lines += ["## Monitor events", "", *(event_line(e) for e in events)] if events else [
        "No monitor events (recalibrations, `threshold_*`, `audit_*`) during the run."]
    return [*lines, ""]


def plot_timeline(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, requests = report["timeline"]["replicas"], report["timeline"]["requests"]
    fig, (top, bottom, savings) = plt.subplots(3, 1, figsize=(11, 9.5), sharex=True,
                                               gridspec_kw={"height_ratios": [1, 1.4, 1]})
    deployments = sorted({d for s in samples for d in s["replicas"]})
    for offset, name in enumerate(deployments):
        # A small offset per line keeps equal counts from hiding each other.
        top.step([s["t"] for s in samples], [s["replicas"].get(name, 0) + 0.03 * offset for s in samples],
                 where="post", label=name)
    top.set_ylabel("running replicas")
    top.set_ylim(-0.2, 3.0)
    top.legend(loc="upper right", fontsize=8, ncol=5)
    ok = [r for r in requests if r["ok"]]
    bottom.scatter([r["t"] for r in ok], [r["latency_ms"] for r in ok], s=3, alpha=0.35, label="request latency")
    if ok:
        edges = np.arange(0, max(r["t"] for r in ok) + 5, 5.0)
        p95 = []
        for lo in edges:
            window = [r["latency_ms"] for r in ok if lo <= r["t"] < lo + 5]
            p95.append(np.percentile(window, 95) if window else np.nan)
        bottom.plot(edges + 2.5, p95, color="black", label="p95 per 5 s")
    failed = [r for r in requests if not r["ok"]]
    if failed:
        bottom.scatter([r["t"] for r in failed], [r["latency_ms"] for r in failed], marker="x", color="red",
                       label="failed after retries")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    shares = [b for b in report["timeline"].get("saved_share", []) if b["saved_share"] is not None]
    savings.plot([b["t"] for b in shares], [b["saved_share"] for b in shares], marker=".", color="green",
                 label="saved share of frontier cost, requests finishing per 5 s")
    savings.set_ylim(-0.05, 1.05)
    savings.set_ylabel("saved share")
    savings.set_xlabel("seconds since the first phase began")
    savings.legend(loc="lower left", fontsize=8)
    t = 0.0
    for summary in report["phases"]:
        for axis in (top, bottom, savings):
            axis.axvline(t, color="grey", linestyle=":", linewidth=0.8)
        top.text(t + 1, 2.45, summary["phase"]["name"], fontsize=8, va="top")
        shade_if_flagged(savings, summary, t, t + summary["phase"]["duration_s"])
        t += summary["phase"]["duration_s"]
    for kill in report["kills"]:
        for axis in (top, bottom):
            axis.axvline(kill["t"], color="red", linewidth=0.8)
        bottom.text(kill["t"] + 0.5, bottom.get_ylim()[1] * 0.6, f"SIGKILL {kill['deployment']}", fontsize=7,
                    color="red", rotation=90, va="top")
    draw_events((top, bottom, savings), report.get("monitor_events", []), savings)
    bottom.legend(loc="upper right", fontsize=8)
    fig.suptitle("routenlp bench load: replicas, latency and savings over time\n(red: replica kills; "
                 "purple: recalibrations; orange: other threshold and audit events)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
