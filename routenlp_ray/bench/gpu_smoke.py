"""GPU readiness: two vLLM tiers on a CUDA GPU, in ``serve_config.yaml``'s shape, with small local models.

``benchmarks/gpu_smoke.sh`` builds the environment and runs this (``routenlp bench gpu-smoke``). It
exports the packaged SmolLM2 twice (the base model as the small tier, the distilled student as the
large one: no download), serves both as ``type: vllm, device: gpu`` tiers sharing one GPU through
Ray Serve LLM behind the router, sends validation queries of the six tasks through the openai client,
and writes what each answer cost and which tier gave it. Without a GPU it stops before anything starts.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import RouteNLPError
from routenlp_ray.bench.report import write_report
from routenlp_ray.bench.serving import ServingApps, local_serve
from routenlp_ray.config.app import RouteNLPConfig, parse_config
from routenlp_ray.models.export import default_cache_dir, export_hf_folder

TASKS = ("cs_intent", "cs_response", "fin_ner", "fin_summarization", "legal_clause", "legal_risk")
STUDENT = "artifacts/students/smollm2-v1"


class GPUUnavailableError(RouteNLPError, RuntimeError):
    """The GPU smoke test was started where no CUDA GPU is usable."""


def require_cuda() -> str:
    """The GPU's name, or a clear error saying what is missing."""
    try:
        import torch
    except ImportError as exc:
        raise GPUUnavailableError("gpu-smoke needs torch with CUDA; torch is not installed") from exc
    if not torch.cuda.is_available():
        raise GPUUnavailableError(
            f"gpu-smoke needs a CUDA GPU: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) "
            "sees none. Run it on a GPU node; on CPU, `make test-vllm` runs the same tiers on vLLM's CPU build."
        )
    return torch.cuda.get_device_name(0)


def smoke_config(small: Path, large: Path, work_dir: Path) -> RouteNLPConfig:
    """Two GPU vLLM tiers (each half a GPU) and the six tasks, as in serve_config.yaml."""

    def tier(name: str, model: Path, price: tuple[float, float]) -> dict[str, Any]:
        return {
            "name": name,
            "engine": {"type": "vllm", "device": "gpu", "model_source": str(model), "top_logprobs": 2,
                       "engine_kwargs": {"max_model_len": 8192, "gpu_memory_utilization": 0.4},
                       "max_input_tokens": 7680},
            "pricing": {"input_per_1m": price[0], "output_per_1m": price[1]},
            "limits": {"default_max_tokens": 128, "max_tokens": 512},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "resources": {"num_cpus": 1, "num_gpus": 0.45},
            "timeout_s": 60,
        }

    return parse_config({
        "name": "routenlp-gpu-smoke",
        "tiers": [tier("small", small, (0.04, 0.08)), tier("large", large, (2.5, 10.0))],
        "tasks": [{"name": "chat", "metric": "none"}, *({"name": t} for t in TASKS)],
        "cascade": {"alpha": 0.1, "uncertainty": "mean_nll", "default_threshold": 1.0},
        "storage": {"log_uri": str(work_dir / "log"), "spool_dir": str(work_dir / "spool")},
        "server": {"default_task": "chat", "resources": {"num_cpus": 0.5}},
    }, source="gpu-smoke")


def run_gpu_smoke(out: str, data_dir: str, apps: ServingApps, per_task: int = 5) -> dict[str, Any]:
    from openai import OpenAI

    from routenlp_ray.bench.load import task_rows

    device = require_cuda()  # before any model is exported or Ray started
    models = default_cache_dir() / "models"
    small = export_hf_folder(models / "smollm2-135m-instruct")
    large = export_hf_folder(models / "smollm2-student-v1", adapter=STUDENT)
    rows: list[dict[str, Any]] = []
    with local_serve("routenlp-gpu-smoke-") as (port, work_dir):
        from ray import serve

        started = time.perf_counter()
        serve.run(apps.router(smoke_config(small.resolve(), large.resolve(), work_dir)), name="gpu-smoke")
        startup_s = time.perf_counter() - started
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
        for task in TASKS:
            for row in task_rows(data_dir, [task])[:per_task]:
                sent = time.perf_counter()
                response = client.chat.completions.create(
                    model=f"routenlp/{task}", messages=[{"role": "user", "content": row["input"]}], max_tokens=64)
                routing = response.model_extra["routing"]
                rows.append({"task": task, "answered_by": routing["answered_by"], "cost_usd": routing["cost_usd"],
                             "latency_s": time.perf_counter() - sent, "attempts": routing["attempts"],
                             "prompt_tokens": response.usage.prompt_tokens,
                             "completion_tokens": response.usage.completion_tokens})
        serve.delete("gpu-smoke")
    per_task_summary = {
        task: {"queries": len(mine),
               "answered_by": {t: sum(r["answered_by"] == t for r in mine) for t in ("small", "large")},
               "median_latency_s": statistics.median(r["latency_s"] for r in mine)}
        for task in TASKS if (mine := [r for r in rows if r["task"] == task])
    }
    return write_report(out, {"benchmark": "gpu-smoke", "gpu": device, "startup_s": startup_s,
                               "per_task": per_task_summary, "rows": rows})
