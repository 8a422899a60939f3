"""Serving benchmarks: router ingress overhead against a bare tier, and memory of the embedded default.

Both are measured on a local Ray started by the benchmark, with traffic only on loopback.
The overhead runs alternate the router and the direct path in rounds, so machine noise
lands on both sides of the ratio.

The library does not import ``deployments``: the router and tier applications are built by
the builders there, which the caller (the ``routenlp bench`` command) hands in as
``ServingApps``. Only the benchmark's own bare ingress is built here (``bench/direct.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from routenlp_ray._net import free_port
from routenlp_ray.bench.report import write_report
from routenlp_ray.config.app import RouteNLPConfig, load_config
from routenlp_ray.config.tiers import TierConfig

if TYPE_CHECKING:
    from ray.serve import Application


@dataclass(frozen=True)
class ServingApps:
    """The Serve application builders a serving benchmark deploys (``deployments.builders``)."""

    # The whole RouteNLP application for a config: router ingress, tiers, monitor.
    router: Callable[[RouteNLPConfig], "Application"]
    # One tier's deployment, the direct baseline's only child.
    tier: Callable[[TierConfig], "Application"]


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=float)
    return {
        "n": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
    }


async def _load(
    url: str, bodies: list[dict[str, Any]], concurrency: int, timeout_s: float,
    answered_by: list[str] | None = None,
) -> tuple[list[float], int]:
    """POST every body with ``concurrency`` clients in flight; returns latencies and the error count.

    With ``answered_by``, each successful response's answering tier is appended to it.
    """
    import httpx

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                    ok = response.status_code == 200
                except Exception:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - started) * 1000)
                    if answered_by is not None:
                        answered_by.append(response.json()["routing"]["answered_by"])
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def _replay_rows(data_dir: Path, limit: int) -> list[dict[str, Any]]:
    rows = []
    with (data_dir / "cs_intent" / "validation.jsonl").open() as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def _fast_tier_config(base: RouteNLPConfig, records: Path, log_dir: Path) -> RouteNLPConfig:
    """A one-tier router over the replay tier: the fastest real tier, so overhead is not hidden."""
    data = base.model_dump(mode="json")
    frontier = data["tiers"][-1]
    frontier["engine"]["records"] = [str(records)]
    frontier["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    data["tiers"] = [frontier]
    data["cascade"] = {}
    data["storage"] = {"log_uri": str(log_dir / "log"), "spool_dir": str(log_dir / "spool")}
    return RouteNLPConfig.model_validate(data)


def bench_ingress_overhead(
    config: RouteNLPConfig,
    data_dir: Path,
    work_dir: Path,
    port: int,
    requests: int,
    concurrency_levels: tuple[int, ...],
    rounds: int,
    apps: ServingApps,
) -> dict[str, Any]:
    from ray import serve

    from routenlp_ray.bench.direct import build_direct_tier_app

    rows = _replay_rows(data_dir, 200)
    records = work_dir / "replay.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fast = _fast_tier_config(config, records, work_dir)
    serve.run(apps.router(fast), name="bench-router", route_prefix="/router")
    tier = fast.with_absolute_paths(os.getcwd()).tiers[0]
    serve.run(build_direct_tier_app(apps.tier(tier)), name="bench-direct", route_prefix="/direct")
    bodies = [
        {"model": "routenlp/cs_intent", "task": "cs_intent", "max_tokens": 16,
         "messages": [{"role": "user", "content": rows[i % len(rows)]["input"]}]}
        for i in range(requests)
    ]
    paths = {"router": f"http://127.0.0.1:{port}/router/v1/chat/completions",
             "direct": f"http://127.0.0.1:{port}/direct/v1/chat/completions"}
    for url in paths.values():  # warm both paths: connections, imports, first-call caches
        asyncio.run(_load(url, bodies[:50], 4, 60))
    results: dict[str, Any] = {}
    for concurrency in concurrency_levels:
        samples: dict[str, list[float]] = {"router": [], "direct": []}
        errors = {"router": 0, "direct": 0}
        for _ in range(rounds):
            for name, url in paths.items():
                latencies, failed = asyncio.run(_load(url, bodies, concurrency, 120))
                samples[name].extend(latencies)
                errors[name] += failed
        router, direct = latency_summary(samples["router"]), latency_summary(samples["direct"])
        results[f"concurrency_{concurrency}"] = {
            "router": router,
            "direct": direct,
            "errors": errors,
            "added_p50_ms": router["p50_ms"] - direct["p50_ms"],
            "added_p99_ms": router["p99_ms"] - direct["p99_ms"],
            "p50_ratio": router["p50_ms"] / direct["p50_ms"],
        }
    serve.delete("bench-router")
    serve.delete("bench-direct")
    return results


class _MemorySampler:
    """Samples the summed memory of every process Ray started under this driver."""

    def __init__(self, interval_s: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        rss = pss = 0
        per_process = []
        for proc in self._psutil.Process().children(recursive=True):
            try:
                info = proc.memory_full_info()
                name = " ".join(proc.cmdline()[:1])[:80] or proc.name()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            per_process.append({"name": proc.name(), "cmd": name, "rss_mb": info.rss / 2**20})
        if pss > self.peak_pss:
            self.peak_pss, self.peak_processes = pss, sorted(per_process, key=lambda p: -p["rss_mb"])[:8]
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)


def bench_embedded_memory(
    config: RouteNLPConfig, port: int, work_dir: Path, requests: int, apps: ServingApps
) -> dict[str, Any]:
    """Peak memory of Ray plus the embedded default (SmolLM2 tier, replay frontier, router) under load."""
    from ray import serve

    data = config.model_dump(mode="json")
    data["storage"] = {"log_uri": str(work_dir / "mem-log"), "spool_dir": str(work_dir / "mem-spool")}
    embedded = RouteNLPConfig.model_validate(data)
    with _MemorySampler() as sampler:
        started = time.perf_counter()
        serve.run(apps.router(embedded), name="bench-embedded", route_prefix="/embedded")
        ready_s = time.perf_counter() - started
        bodies = [
            {"model": "routenlp/chat", "max_tokens": 16, "messages": [{"role": "user", "content": f"Tell me fact {i}."}]}
            for i in range(requests)
        ]
        latencies, errors = asyncio.run(_load(f"http://127.0.0.1:{port}/embedded/v1/chat/completions", bodies, 8, 300))
        sampler.sample()
    serve.delete("bench-embedded")
    return {
        "peak_rss_sum_mb": sampler.peak_rss / 2**20,
        "peak_pss_sum_mb": sampler.peak_pss / 2**20,
        "largest_processes_at_peak": sampler.peak_processes,
        "startup_s": ready_s,
        "requests": len(bodies),
        "errors": errors,
        "latency": latency_summary(latencies) if latencies else None,
        "note": "PSS counts shared pages once; the RSS sum counts them per process and overstates the total.",
    }


@contextmanager
def local_serve(prefix: str) -> Iterator[tuple[int, Path]]:
    """A local Ray and Serve on a free loopback port, and scratch space outside the repo; both go at exit."""
    import ray
    from ray import serve

    work_dir = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port, work_dir
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)


def run_serving_benchmark(
    config_path: str,
    data_dir: str,
    out: str,
    apps: ServingApps,
    requests: int = 300,
    concurrency_levels: tuple[int, ...] = (1, 32),
    rounds: int = 2,
    memory_requests: int = 24,
    progress: Callable[[str], None] = print,
    parts: tuple[str, ...] = ("overhead", "memory"),
) -> dict[str, Any]:
    """``parts`` picks what to measure: the router's ``overhead``, the embedded default's ``memory``, or both."""
    unknown = sorted(set(parts) - {"overhead", "memory"})
    if unknown or not parts:
        raise ValueError(f"parts must be 'overhead' and/or 'memory', got {list(parts)}")
    config = load_config(config_path)
    body: dict[str, Any] = {"benchmark": "serving", "config": config_path,
                            "targets": {"added_p50_ms": 10, "added_p99_ms": 30, "peak_memory_mb": 4096}}
    # Scratch space (a replay slice of the shared data, throwaway query logs): never in the repo.
    with local_serve("routenlp-bench-serving-") as (port, work_dir):
        if "overhead" in parts:
            progress(f"ingress overhead: {requests} requests x {rounds} rounds at concurrency {concurrency_levels}")
            body["ingress_overhead"] = bench_ingress_overhead(
                config, Path(data_dir), work_dir, port, requests, concurrency_levels, rounds, apps
            )
        if "memory" in parts:
            progress("memory of the embedded default under load")
            body["memory"] = bench_embedded_memory(config, port, work_dir, memory_requests, apps)
    return write_report(out, body)
