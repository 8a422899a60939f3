"""``bench specialist``, ``bench streaming``, ``bench gpu-smoke`` and ``bench llm-tiers``: one tier's engine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from routenlp_ray.cli._common import DEFAULT_DATA_DIR, DEFAULT_LOCAL_CONFIG, Subparsers
from routenlp_ray.cli.bench._apps import serving_apps


def _cmd_bench_specialist(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.report import write_report
    from routenlp_ray.bench.specialist_bench import (
        compare_markdown,
        compare_specialist_artifacts,
        run_specialist_benchmark,
        with_engine,
    )
    from routenlp_ray.config import load_config

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    if args.threads:
        config = with_engine(config, args.tier, num_threads=args.threads)
    if args.artifacts or args.variants:
        artifacts = args.artifacts or [config.tier(args.tier).engine.path]  # type: ignore[union-attr]
        variants = [_engine_variant(text) for text in args.variants] if args.variants else None
        report = compare_specialist_artifacts(config, args.tier, artifacts, args.data_dir, per_task=args.per_task,
                                              batch_size=args.batch_size, rounds=args.rounds, variants=variants)
        markdown = compare_markdown(report)
        write_report(args.out, report, markdown=markdown)
        print(markdown)
        print(f"wrote {args.out}")
        return 0
    report = run_specialist_benchmark(config, args.tier, args.data_dir, per_task=args.per_task,
                                      batch_size=args.batch_size, rounds=args.rounds)
    write_report(args.out, report)
    single, batched = report["single_client_ms"], report["batched_answers_per_s"]
    print(f"{report['queries']} queries over {report['tasks']}: one client p50 {single['p50']:.1f} ms, "
          f"p99 {single['p99']:.1f} ms; batched {batched['mean']:.0f} ± {batched['sd']:.0f} answers/s; "
          f"peak RSS {report['peak_rss_mb']:.0f} MB")
    print(f"wrote {args.out}")
    return 0


def _engine_variant(text: str) -> dict[str, Any]:
    """``trace=false,encode_workers=2`` as engine settings; values are read as YAML scalars."""
    import yaml

    variant: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--variants: {item!r} is not KEY=VALUE")
        variant[key.strip()] = yaml.safe_load(value)
    return variant


def _cmd_bench_streaming(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.streaming_bench import run_streaming_benchmark

    report = run_streaming_benchmark(args.config, args.out, serving_apps(), tier=args.tier, rounds=args.rounds,
                                     max_tokens=args.max_tokens)
    for mode, result in report["summary"].items():
        ttft, total = result["median_ttft_s"], result["median_total_s"]
        print(f"{mode}: first token {ttft['mean']:.2f} ± {ttft['sd']:.2f} s, whole answer "
              f"{total['mean']:.2f} ± {total['sd']:.2f} s ({result['requests']} requests)")
    print(f"wrote {args.out}")
    return 0


def _cmd_bench_gpu_smoke(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.gpu_smoke import GPUUnavailableError, run_gpu_smoke

    try:
        report = run_gpu_smoke(args.out, args.data_dir, serving_apps(), per_task=args.per_task)
    except GPUUnavailableError as exc:
        print(f"routenlp bench gpu-smoke: {exc}", file=sys.stderr)
        return 2
    for task, row in report["per_task"].items():
        print(f"{task}: {row['queries']} queries, answered by {row['answered_by']}, "
              f"median {row['median_latency_s']:.2f} s")
    print(f"{report['gpu']}: wrote {args.out}")
    return 0


def _cmd_bench_llm_tiers(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.llm_tiers import llm_tiers_markdown, run_llm_tier_benchmark

    sides = {"transformers": (args.transformers_config, args.tier), "vllm-cpu": (args.vllm_config, args.tier)}
    report = run_llm_tier_benchmark(args.out, serving_apps(), sides, concurrency=tuple(args.concurrency),
                                    requests_per_client=args.requests_per_client, rounds=args.rounds,
                                    max_tokens=args.max_tokens)
    print(llm_tiers_markdown(report))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def register(benches: Subparsers) -> None:
    specialist = benches.add_parser("specialist",
                                    help="latency, throughput, memory and accuracy of a specialist tier's engine")
    specialist.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    specialist.add_argument("--tier", default="specialist")
    specialist.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    specialist.add_argument("--per-task", type=int, default=100, help="validation queries per task")
    specialist.add_argument("--batch-size", type=int, default=64)
    specialist.add_argument("--rounds", type=int, default=3)
    specialist.add_argument("--threads", type=int, default=None, help="override the tier's torch threads")
    specialist.add_argument("--artifacts", nargs="+", default=None, metavar="PATH",
                            help="specialist artifacts to measure side by side in one process (the tier's path replaced)")
    specialist.add_argument("--variants", nargs="+", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                            help="engine settings to run each artifact with, side by side in one process; '' is the "
                                 "tier as configured (e.g. --variants trace=false '' encode_workers=2)")
    specialist.add_argument("--out", default="results/bench_specialist.json")
    specialist.set_defaults(func=_cmd_bench_specialist)

    streaming = benches.add_parser("streaming", help="time to the first token with and without live streaming")
    streaming.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    streaming.add_argument("--tier", default="smollm2", help="the tier that answers, as the cascade's last")
    streaming.add_argument("--rounds", type=int, default=3)
    streaming.add_argument("--max-tokens", type=int, default=48)
    streaming.add_argument("--out", default="results/bench_streaming.json")
    streaming.set_defaults(func=_cmd_bench_streaming)

    gpu_smoke = benches.add_parser(
        "gpu-smoke", help="two vLLM tiers on a CUDA GPU, the six tasks through the openai client "
        "(benchmarks/gpu_smoke.sh); stops at once without a GPU")
    gpu_smoke.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    gpu_smoke.add_argument("--per-task", type=int, default=5)
    gpu_smoke.add_argument("--out", default="results/gpu_smoke.json")
    gpu_smoke.set_defaults(func=_cmd_bench_gpu_smoke)

    llm_tiers = benches.add_parser(
        "llm-tiers", help="the transformers and vLLM-CPU SmolLM2 tiers side by side at 1, 8 and 16 clients "
        "(run it from the vLLM environment: make bench-llm-tiers)")
    llm_tiers.add_argument("--transformers-config", default=DEFAULT_LOCAL_CONFIG)
    llm_tiers.add_argument("--vllm-config", default="serve_config.vllm-cpu.yaml")
    llm_tiers.add_argument("--tier", default="smollm2", help="the tier measured in both configs")
    llm_tiers.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    llm_tiers.add_argument("--requests-per-client", type=int, default=3)
    llm_tiers.add_argument("--rounds", type=int, default=2)
    llm_tiers.add_argument("--max-tokens", type=int, default=32)
    llm_tiers.add_argument("--out", default="results/bench_llm_tiers.json")
    llm_tiers.set_defaults(func=_cmd_bench_llm_tiers)
