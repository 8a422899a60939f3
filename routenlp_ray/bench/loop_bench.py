"""The traffic of ``routenlp bench loop``: the six tasks' queries through the router, into the query log.

Traffic is a seeded sample of each task's train split sent through ``RouterService`` with
the config's real engines in process (SmolLM2 and the replay frontier for the embedded
default), so the query log is exactly what the served router writes; the loop experiment
(``bench/loop_experiment.py``) then mines, distils and evaluates on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.engines.factory import make_engine
from routenlp_ray.serving.schemas import ChatCompletionRequest
from routenlp_ray.serving.service import RouterService
from routenlp_ray.tasks.data import load_examples, task_file
from routenlp_ray.telemetry.querylog import QueryLog


async def _send(service: RouterService, data_dir: Path, tasks: list[str], per_task: int,
                seed: int, concurrency: int = 8, exclude: Mapping[str, set[str]] | None = None) -> int:
    limiter = asyncio.Semaphore(concurrency)
    sent = 0

    async def one(task: str, text: str) -> None:
        nonlocal sent
        body = ChatCompletionRequest.model_validate(
            {"model": f"routenlp/{task}", "messages": [{"role": "user", "content": text}]}
        )
        async with limiter:
            try:
                await service.chat(body)
                sent += 1
            except Exception:  # a query no tier could answer is logged as failed; keep going
                pass

    jobs = []
    for task in tasks:
        # Traffic comes from the train split only: the held-out slice is drawn from validation,
        # and a task with no train split (fin_summarization) must not be distilled on it.
        if not (data_dir / task / "train.jsonl").is_file():
            continue
        examples = load_examples(task_file(data_dir, task, "train"), seed=seed)
        # Rows a student was distilled on are no traffic: the loop must see queries new to it.
        kept = [e for e in examples if e.id not in (exclude or {}).get(task, set())]
        for example in kept[:per_task]:
            jobs.append(one(task, example.input))
    await asyncio.gather(*jobs)
    return sent


def generate_traffic(config: RouteNLPConfig, data_dir: Path, tasks: list[str], per_task: int, seed: int = 1,
                     exclude: Mapping[str, set[str]] | None = None) -> dict[str, Any]:
    """Send the sample (leaving out the ``exclude`` row ids per task) through the router; returns counts and timing."""
    started = time.perf_counter()
    engines = {tier.name: make_engine(tier) for tier in config.tiers}
    tiers = {name: engine.generate for name, engine in engines.items()}
    with QueryLog(config.storage) as log:
        service = RouterService(config, tiers, query_log=log)
        sent = asyncio.run(_send(service, data_dir, tasks, per_task, seed, exclude=exclude))
    return {"queries": sent, "seconds": time.perf_counter() - started}
