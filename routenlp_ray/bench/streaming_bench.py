"""Time to the first token with live streaming of the last tier, and without it.

The router runs over one transformers tier (the config's SmolLM2), so that tier is the last
one and its answer streams as it is generated. "Without" is what the service did before the
last tier could stream: nothing reaches the client until the whole answer exists, so the
first token arrives with the complete answer (a ``stream: false`` request; a buffered stream
adds only its own framing). Both modes alternate request by request in every round, so
machine noise lands on both.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from routenlp_ray.bench.report import write_report
from routenlp_ray.bench.serving import ServingApps, local_serve
from routenlp_ray.config.app import RouteNLPConfig, load_config

PROMPTS = (
    "Count from one to twenty in words.",
    "Explain in two sentences why the sky is blue.",
    "Write a short note thanking a colleague for their help.",
    "List five fruits and one fact about each.",
    "Describe a bicycle to someone who has never seen one.",
    "Give three tips for writing clear emails.",
)


def last_tier_config(config: RouteNLPConfig, tier: str, log_dir: Path) -> RouteNLPConfig:
    """``config`` cut down to ``tier`` alone, serving free chat: that tier is the cascade's last."""
    data = config.model_dump(mode="json")
    only = next(t for t in data["tiers"] if t["name"] == tier)
    only["tasks"] = None  # the last tier answers every task
    data["tiers"] = [only]
    data["tasks"] = [{"name": "chat", "metric": "none"}]
    data["cascade"] = {}
    data["monitoring"] = {"enabled": False}
    data["server"]["default_task"] = "chat"
    data["storage"] = {"log_uri": str(log_dir / "log"), "spool_dir": str(log_dir / "spool")}
    return RouteNLPConfig.model_validate(data)


def timed_request(url: str, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """Seconds to the first text and to the end of the answer, and the answering tier's streaming mode."""
    import httpx

    started = time.perf_counter()
    first: float | None = None
    with httpx.Client(timeout=300) as client:
        if not stream:
            response = client.post(url, json=body)
            response.raise_for_status()
            total = time.perf_counter() - started
            tokens = response.json()["usage"]["completion_tokens"]
            return {"ttft_s": total, "total_s": total, "completion_tokens": tokens, "mode": "whole"}
        with client.stream("POST", url, json={**body, "stream": True,
                                              "stream_options": {"include_usage": True}}) as response:
            response.raise_for_status()
            mode = response.headers.get("x-routenlp-streaming", "")
            tokens = 0
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                    first = time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        total = time.perf_counter() - started
        return {"ttft_s": first if first is not None else total, "total_s": total, "completion_tokens": tokens,
                "mode": mode}


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_streaming_benchmark(
    config_path: str, out: str, apps: ServingApps, tier: str = "smollm2", rounds: int = 3, max_tokens: int = 48,
) -> dict[str, Any]:
    config = load_config(config_path).with_absolute_paths(Path.cwd())
    with local_serve("routenlp-bench-streaming-") as (port, work_dir):
        from ray import serve

        serve.run(apps.router(last_tier_config(config, tier, work_dir)), name="bench-streaming",
                  route_prefix="/streaming")
        url = f"http://127.0.0.1:{port}/streaming/v1/chat/completions"
        bodies = [{"model": "routenlp/chat", "max_tokens": max_tokens, "messages": [{"role": "user", "content": p}]}
                  for p in PROMPTS]
        timed_request(url, bodies[0], stream=True)  # warm-up: first-call caches, not counted
        samples: dict[str, list[dict[str, Any]]] = {"live": [], "whole": []}
        for round_index in range(rounds):
            for i, body in enumerate(bodies):
                # Alternate which mode goes first, so neither always follows the other.
                order = ("live", "whole") if (i + round_index) % 2 == 0 else ("whole", "live")
                for mode in order:
                    result = timed_request(url, body, stream=mode == "live")
                    samples[mode].append({**result, "round": round_index, "prompt": i})
        serve.delete("bench-streaming")
    summary: dict[str, Any] = {}
    for mode, rows in samples.items():
        per_round = {
            key: [statistics.median(r[key] for r in rows if r["round"] == k) for k in range(rounds)]
            for key in ("ttft_s", "total_s")
        }
        summary[mode] = {
            "requests": len(rows),
            "streaming_header": sorted({r["mode"] for r in rows}),
            "median_ttft_s": _mean_sd(per_round["ttft_s"]),
            "median_total_s": _mean_sd(per_round["total_s"]),
            "mean_completion_tokens": statistics.fmean(r["completion_tokens"] for r in rows),
        }
    live, whole = summary["live"]["median_ttft_s"]["mean"], summary["whole"]["median_ttft_s"]["mean"]
    return write_report(out, {
        "benchmark": "streaming",
        "config": config_path,
        "tier": tier,
        "max_tokens": max_tokens,
        "prompts": len(PROMPTS),
        "rounds": rounds,
        "summary": summary,
        "ttft_speedup": whole / live if live > 0 else None,
        "samples": samples,
        "note": ("mean ± sd over rounds of each round's median over the prompts; 'whole' is a stream: false "
                 "request, whose first token comes with the complete answer, as before live streaming"),
    })
