"""Two LLM tiers side by side in one run: the embedded default's transformers SmolLM2 and the same
model on vLLM (CPU backend, through Ray Serve LLM).

Each tier runs as the last (so live-streaming) tier of its own router application, one replica
(autoscaling pinned, so a replica starting mid-run cannot land on one side only), in the same Ray
instance and run, one after the other: deployed together on two cores (with another job running),
the transformers side's first requests timed out behind the vLLM engine, so each side has the
machine to itself while it is measured, and is deleted before the next is deployed. A request is a streamed chat completion with ``include_usage``, sent by
``concurrency`` clients that each wait for their answer before sending the next.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from routenlp_ray.bench.report import write_report
from routenlp_ray.bench.serving import ServingApps, latency_summary, local_serve
from routenlp_ray.bench.streaming_bench import PROMPTS, last_tier_config, timed_request
from routenlp_ray.config.app import RouteNLPConfig, load_config

DEFAULT_SIDES = {
    "transformers": ("serve_config.local.yaml", "smollm2"),
    "vllm-cpu": ("serve_config.vllm-cpu.yaml", "smollm2"),
}


def one_replica(config: RouteNLPConfig) -> RouteNLPConfig:
    data = config.model_dump(mode="json")
    for tier in data["tiers"]:
        tier["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    return RouteNLPConfig.model_validate(data)


def run_level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """``requests`` streamed answers from ``concurrency`` closed-loop clients."""
    bodies = [{"model": "routenlp/chat", "max_tokens": max_tokens, "temperature": 0.0,
               "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]} for i in range(requests)]
    import httpx

    def timed(body: dict[str, Any]) -> dict[str, Any] | str:
        try:
            return timed_request(url, body, stream=True)
        except httpx.HTTPError as exc:  # counted and shown, not fatal: a failed request is a result too
            return f"{type(exc).__name__}: {exc}"

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(timed, bodies))
    wall = time.perf_counter() - started
    results = [r for r in outcomes if isinstance(r, dict)]
    errors = [r for r in outcomes if isinstance(r, str)]
    if not results:
        raise RuntimeError(f"every request failed at {concurrency} clients: {errors[0]}")
    tokens = sum(r["completion_tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "failed": len(errors),
        "errors": errors[:3],
        "wall_s": wall,
        "answers_per_s": len(results) / wall,
        "tokens_per_s": tokens / wall,
        "mean_completion_tokens": tokens / len(results),
        "latency": latency_summary([r["total_s"] * 1000 for r in results]),
        "ttft": latency_summary([r["ttft_s"] * 1000 for r in results]),
        "streaming_header": sorted({r["mode"] for r in results}),
    }


def run_llm_tier_benchmark(
    out: str,
    apps: ServingApps,
    sides: dict[str, tuple[str, str]] | None = None,
    concurrency: tuple[int, ...] = (1, 8, 16),
    requests_per_client: int = 3,
    rounds: int = 2,
    max_tokens: int = 32,
) -> dict[str, Any]:
    sides = sides or DEFAULT_SIDES
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    startup_s: dict[str, float] = {}
    names = list(sides)
    with local_serve("routenlp-bench-llm-tiers-") as (port, work_dir):
        from ray import serve

        for name in names:
            config_path, tier = sides[name]
            config = load_config(config_path).with_absolute_paths(Path.cwd())
            started = time.perf_counter()
            serve.run(apps.router(one_replica(last_tier_config(config, tier, work_dir / name))),
                      name=f"bench-{name}", route_prefix=f"/{name}")
            startup_s[name] = time.perf_counter() - started
            url = f"http://127.0.0.1:{port}/{name}/v1/chat/completions"
            run_level(url, 1, 2, max_tokens)  # warm-up: first-call caches and compilation, not counted
            for round_index in range(rounds):
                for level in concurrency:
                    row = run_level(url, level, level * requests_per_client, max_tokens)
                    results[name].append({**row, "round": round_index})
            serve.delete(f"bench-{name}")
    summary = {name: _summarize(rows, concurrency) for name, rows in results.items()}
    first, second = names[0], names[1] if len(names) > 1 else names[0]
    ratios = {
        str(level): {
            "answers_per_s": summary[second][str(level)]["answers_per_s"]["mean"]
            / summary[first][str(level)]["answers_per_s"]["mean"],
            "p50_latency": summary[second][str(level)]["p50_ms"]["mean"] / summary[first][str(level)]["p50_ms"]["mean"],
            "p50_ttft": summary[second][str(level)]["ttft_p50_ms"]["mean"]
            / summary[first][str(level)]["ttft_p50_ms"]["mean"],
        }
        for level in concurrency
    }
    return write_report(out, {
        "benchmark": "llm-tiers",
        "sides": {name: {"config": c, "tier": t} for name, (c, t) in sides.items()},
        "concurrency": list(concurrency),
        "requests_per_client": requests_per_client,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "startup_s": startup_s,
        "summary": summary,
        "ratios": {"of": f"{second} / {first}", **ratios},
        "rows": results,
        "note": ("one replica per side, sides measured one after the other; mean ± sd over rounds of each round's figure; latency is the whole "
                 "streamed answer, ttft the first text chunk, both as the openai-compatible client sees them"),
    }, markdown=llm_tiers_markdown)


def _summarize(rows: list[dict[str, Any]], concurrency: tuple[int, ...]) -> dict[str, Any]:
    def mean_sd(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    out: dict[str, Any] = {}
    for level in concurrency:
        mine = [r for r in rows if r["concurrency"] == level]
        out[str(level)] = {
            "answers_per_s": mean_sd([r["answers_per_s"] for r in mine]),
            "tokens_per_s": mean_sd([r["tokens_per_s"] for r in mine]),
            "p50_ms": mean_sd([r["latency"]["p50_ms"] for r in mine]),
            "p99_ms": mean_sd([r["latency"]["p99_ms"] for r in mine]),
            "ttft_p50_ms": mean_sd([r["ttft"]["p50_ms"] for r in mine]),
            "ttft_p99_ms": mean_sd([r["ttft"]["p99_ms"] for r in mine]),
            "mean_completion_tokens": statistics.fmean(r["mean_completion_tokens"] for r in mine),
        }
    return out


def llm_tiers_markdown(report: dict[str, Any]) -> str:
    names = list(report["sides"])
    lines = [
        "# LLM tier: transformers vs vLLM (CPU backend), side by side",
        "",
        f"Made by `routenlp bench llm-tiers` on {report['machine']['cpus']} CPUs ({report['created_at'][:10]}); "
        f"SmolLM2-135M-Instruct with the LoRA student, {report['max_tokens']} new tokens at most, "
        f"{report['requests_per_client']} requests per client per level, {report['rounds']} rounds. "
        "Each tier is the last tier of its own router, one replica, streamed through the router over HTTP; "
        "the sides run one after the other in one Ray instance. "
        "Mean ± sd over rounds.",
        "",
        "| tier | clients | answers/s | tokens/s | p50 ms | p99 ms | first token p50 ms | first token p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in report["concurrency"]:
        for name in names:
            s = report["summary"][name][str(level)]

            def f(key: str, digits: int = 0) -> str:
                return f"{s[key]['mean']:.{digits}f} ± {s[key]['sd']:.{digits}f}"

            lines.append(f"| {name} | {level} | {f('answers_per_s', 2)} | {f('tokens_per_s', 1)} | {f('p50_ms')} | "
                         f"{f('p99_ms')} | {f('ttft_p50_ms')} | {f('ttft_p99_ms')} |")
    lines += ["", f"Ratios ({report['ratios']['of']}):", "",
              "| clients | answers/s | p50 latency | p50 first token |", "|---|---|---|---|"]
    for level in report["concurrency"]:
        r = report["ratios"][str(level)]
        lines.append(f"| {level} | {r['answers_per_s']:.2f}× | {r['p50_latency']:.2f}× | {r['p50_ttft']:.2f}× |")
    return "\n".join(lines) + "\n"
