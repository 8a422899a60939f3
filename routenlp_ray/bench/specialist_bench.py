"""Speed, memory and accuracy of a specialist tier's engine, in process (no Ray, no HTTP).

Single-client latency is one ``generate`` at a time; throughput is ``generate_batch`` over
batches of 64, the shape a Serve replica's ``serve.batch`` hands the engine under load. Inputs
are real validation queries of every task the tier serves, in a fixed shuffled mix. Accuracy per
task is the task's own ``is_correct`` of the single-client answers against the data's reference.

:func:`compare_specialist_artifacts` runs the same benchmark on several artifacts of one tier,
side by side in one process and on the same queries, rounds interleaved so that machine noise
falls on all of them alike.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.engines.base import GenerationRequest
from routenlp_ray.tasks.data import load_examples


def _requests(config: RouteNLPConfig, tier: str, data_dir: Path, per_task: int, seed: int
              ) -> tuple[list[GenerationRequest], dict[str, Any]]:
    """The shuffled queries, and each one's reference by request id."""
    requests, references = [], {}
    for task in config.tier(tier).tasks or []:
        for example in load_examples(config.task(task).data_file(data_dir, "validation"), limit=per_task, seed=seed):
            requests.append(
                GenerationRequest(request_id=example.id, prompt=example.input, task=task, raw_input=example.input)
            )
            references[example.id] = example.reference
    random.Random(seed).shuffle(requests)
    return requests, references


class _EngineRun:
    """One artifact's engine and what was measured on it."""

    def __init__(self, config: RouteNLPConfig, tier: str) -> None:
        from routenlp_ray.engines.factory import make_engine

        started = time.perf_counter()
        self.engine = make_engine(config.tier(tier))
        self.load_seconds = time.perf_counter() - started
        self.single: list[float] = []
        self.per_task_ms: dict[str, list[float]] = {}
        self.right: dict[str, list[bool]] = {}
        self.throughput: list[float] = []

    def single_client(self, config: RouteNLPConfig, requests: list[GenerationRequest], references: dict[str, Any]) -> None:
        asyncio.run(self.engine.generate_batch(requests[:8]))  # warm-up: first-call allocations
        for request in requests:
            t0 = time.perf_counter()
            result = asyncio.run(self.engine.generate(request))
            elapsed = (time.perf_counter() - t0) * 1000
            task = str(request.task)
            self.single.append(elapsed)
            self.per_task_ms.setdefault(task, []).append(elapsed)
            self.right.setdefault(task, []).append(
                config.task(task).is_correct(result.text, references[str(request.request_id)]))

    def batched_round(self, requests: list[GenerationRequest], batch_size: int) -> None:
        t0 = time.perf_counter()
        for start in range(0, len(requests), batch_size):
            asyncio.run(self.engine.generate_batch(requests[start : start + batch_size]))
        self.throughput.append(len(requests) / (time.perf_counter() - t0))

    def report(self, config: RouteNLPConfig, tier: str, queries: int, batch_size: int) -> dict[str, Any]:
        single, throughput = self.single, self.throughput
        return {
            "benchmark": "specialist",
            "tier": tier,
            "artifact": getattr(self.engine, "version", None),
            "artifact_path": getattr(config.tier(tier).engine, "path", None),
            "encoder_traced": getattr(getattr(self.engine, "encoder", None), "traced", None),
            "encoder_workers": getattr(getattr(self.engine, "encoder", None), "workers", None),
            "tasks": sorted(self.per_task_ms),
            "queries": queries,
            "torch_threads": config.tier(tier).engine.num_threads,  # type: ignore[union-attr]
            "cpu_count": os.cpu_count(),
            "load_seconds": self.load_seconds,
            "single_client_ms": {"p50": float(np.percentile(single, 50)), "p99": float(np.percentile(single, 99)),
                                 "mean": float(np.mean(single))},
            "single_client_p50_ms_per_task": {t: float(np.percentile(v, 50)) for t, v in sorted(self.per_task_ms.items())},
            "single_client_p99_ms_per_task": {t: float(np.percentile(v, 99)) for t, v in sorted(self.per_task_ms.items())},
            "accuracy_per_task": {t: float(np.mean(v)) for t, v in sorted(self.right.items())},
            "batched_answers_per_s": {"batch_size": batch_size, "rounds": throughput,
                                      "mean": float(np.mean(throughput)), "sd": float(np.std(throughput))},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "targets": {"single_p50_ms": 15, "single_p99_ms": 40, "batched_answers_per_s": 300},
        }


def run_specialist_benchmark(
    config: RouteNLPConfig, tier: str, data_dir: str | Path, per_task: int = 100, batch_size: int = 64,
    rounds: int = 3, seed: int = 0,
) -> dict[str, Any]:
    requests, references = _requests(config, tier, Path(data_dir), per_task, seed)
    run = _EngineRun(config, tier)
    run.single_client(config, requests, references)
    for _ in range(rounds):
        run.batched_round(requests, batch_size)
    return run.report(config, tier, len(requests), batch_size)


def compare_specialist_artifacts(
    config: RouteNLPConfig, tier: str, artifacts: list[str], data_dir: str | Path, per_task: int = 100,
    batch_size: int = 64, rounds: int = 3, seed: int = 0, variants: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The benchmark on each artifact (the tier's ``path`` replaced), on the same queries, rounds interleaved.

    ``variants`` are engine settings to run each artifact with (for example ``{"trace": False}`` against
    ``{}``, the tier as configured); each artifact runs once per variant.
    Peak RSS is the process's, so it grows with every engine loaded: read it for the last one only.
    """
    runs_of = [(path, variant) for path in artifacts for variant in (variants or [{}])]
    configs = [with_engine(config, tier, path=str(Path(path).resolve()), **variant) for path, variant in runs_of]
    requests, references = _requests(configs[0], tier, Path(data_dir), per_task, seed)
    runs = [_EngineRun(c, tier) for c in configs]
    for run, c in zip(runs, configs):
        run.single_client(c, requests, references)
    for _ in range(rounds):
        for run in runs:
            run.batched_round(requests, batch_size)
    return {"benchmark": "specialist-compare", "tier": tier, "queries": len(requests), "per_task": per_task,
            "artifacts": [run.report(c, tier, len(requests), batch_size) | {"variant": variant}
                          for run, c, (_, variant) in zip(runs, configs, runs_of)]}


def with_engine(config: RouteNLPConfig, tier: str, **engine: Any) -> RouteNLPConfig:
    """``config`` with ``tier``'s engine settings updated (validated again, so a bad key or value is refused)."""
    data = config.model_dump(mode="json")
    next(t for t in data["tiers"] if t["name"] == tier)["engine"].update(engine)
    return type(config).model_validate(data)


def compare_markdown(report: dict[str, Any]) -> str:
    """Accuracy, latency and throughput of each artifact, one column per artifact."""
    runs = report["artifacts"]
    names = [", ".join([str(r["artifact"]), *(f"{k}={v}" for k, v in r.get("variant", {}).items())]) for r in runs]
    lines = [f"# Specialist engines side by side ({report['queries']} validation queries, "
             f"{report['per_task']} per task, one process)", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(runs)]
    for task in runs[0]["tasks"]:
        lines.append(f"| {task} accuracy | " + " | ".join(f"{r['accuracy_per_task'][task]:.1%}" for r in runs) + " |")
    for task in runs[0]["tasks"]:
        lines.append(f"| {task} p50 ms (one client) | "
                     + " | ".join(f"{r['single_client_p50_ms_per_task'][task]:.1f}" for r in runs) + " |")
    lines.append("| all tasks p50 / p99 ms (one client) | "
                 + " | ".join(f"{r['single_client_ms']['p50']:.1f} / {r['single_client_ms']['p99']:.1f}" for r in runs) + " |")
    lines.append(f"| answers/s, batches of {runs[0]['batched_answers_per_s']['batch_size']} (mean ± sd over rounds) | "
                 + " | ".join(f"{r['batched_answers_per_s']['mean']:.0f} ± {r['batched_answers_per_s']['sd']:.0f}"
                              for r in runs) + " |")
    lines += ["", "Accuracy is the task's own metric against the data's reference (fin_ner: entity F1 >= 0.8). "
              "Targets: one-client p50 <= 15 ms, >= 300 answers/s batched."]
    return "\n".join(lines) + "\n"
