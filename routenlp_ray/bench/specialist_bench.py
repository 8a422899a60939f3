"""Speed and memory of a specialist tier's engine, in process (no Ray, no HTTP).

Single-client latency is one ``generate`` at a time; throughput is ``generate_batch`` over
batches of 64, the shape a Serve replica's ``serve.batch`` hands the engine under load. Inputs
are real validation queries of every task the tier serves, in a fixed shuffled mix.
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


def _requests(config: RouteNLPConfig, tier: str, data_dir: Path, per_task: int, seed: int) -> list[GenerationRequest]:
    requests = []
    for task in config.tier(tier).tasks or []:
        for example in load_examples(config.task(task).data_file(data_dir, "validation"), limit=per_task, seed=seed):
            requests.append(
                GenerationRequest(request_id=example.id, prompt=example.input, task=task, raw_input=example.input)
            )
    random.Random(seed).shuffle(requests)
    return requests


def run_specialist_benchmark(
    config: RouteNLPConfig, tier: str, data_dir: str | Path, per_task: int = 100, batch_size: int = 64,
    rounds: int = 3, seed: int = 0,
) -> dict[str, Any]:
    from routenlp_ray.engines.factory import make_engine

    started = time.perf_counter()
    engine = make_engine(config.tier(tier))
    load_s = time.perf_counter() - started
    requests = _requests(config, tier, Path(data_dir), per_task, seed)
    asyncio.run(engine.generate_batch(requests[:8]))  # warm-up: first-call allocations

    single: list[float] = []
    per_task_ms: dict[str, list[float]] = {}
    for request in requests:
        t0 = time.perf_counter()
        asyncio.run(engine.generate(request))
        elapsed = (time.perf_counter() - t0) * 1000
        single.append(elapsed)
        per_task_ms.setdefault(str(request.task), []).append(elapsed)

    throughput = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for start in range(0, len(requests), batch_size):
            asyncio.run(engine.generate_batch(requests[start : start + batch_size]))
        throughput.append(len(requests) / (time.perf_counter() - t0))

    return {
        "benchmark": "specialist",
        "tier": tier,
        "artifact": getattr(engine, "version", None),
        "tasks": sorted(per_task_ms),
        "queries": len(requests),
        "torch_threads": config.tier(tier).engine.num_threads,  # type: ignore[union-attr]
        "cpu_count": os.cpu_count(),
        "load_seconds": load_s,
        "single_client_ms": {"p50": float(np.percentile(single, 50)), "p99": float(np.percentile(single, 99)),
                             "mean": float(np.mean(single))},
        "single_client_p50_ms_per_task": {t: float(np.percentile(v, 50)) for t, v in sorted(per_task_ms.items())},
        "single_client_p99_ms_per_task": {t: float(np.percentile(v, 99)) for t, v in sorted(per_task_ms.items())},
        "batched_answers_per_s": {"batch_size": batch_size, "rounds": throughput,
                                  "mean": float(np.mean(throughput)), "sd": float(np.std(throughput))},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "targets": {"single_p50_ms": 15, "single_p99_ms": 40, "batched_answers_per_s": 300},
    }
