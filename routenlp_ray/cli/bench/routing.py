"""``bench routing``, ``bench router-latency`` and ``bench tasks``: routing policies, offline."""

from __future__ import annotations

import argparse

from routenlp_ray.cli._common import Subparsers, add_records_arguments, benchmark_tasks


def _cmd_bench_routing(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.routing_bench import RECOMMENDED, run_routing_benchmark, verdict, write_routing_report
    from routenlp_ray.routing.fit import FitSettings

    settings = FitSettings(epochs=args.epochs)
    report = run_routing_benchmark(args.data, split=args.split, seeds=range(args.seed, args.seed + args.seeds),
                                   settings=settings, cross_source=not args.no_cross_source,
                                   latency_queries=args.latency_queries, artifact_out=args.save_artifact,
                                   compare_minilm=args.compare_minilm)
    write_routing_report(report, args.out)
    for name, row in report["sources"].items():
        v = verdict(row["summary"])
        s = row["summary"][RECOMMENDED]
        print(f"{name}: router AUC {s['auc']['mean']:.3f} (best baseline {v['best_baseline']} "
              f"{v['best_baseline_auc']:.3f}); cost reduction at 95% {v['router_cost_reduction_95']} "
              f"vs RouteLLM-MF {v['routellm_mf_cost_reduction_95']}")
    lat = report["decision_latency"]
    print(f"decision: p50 {lat['single_p50_ms']:.2f} ms, p99 {lat['single_p99_ms']:.2f} ms, "
          f"{lat['batched_decisions_per_s']:.0f}/s batched")
    print(f"wrote {args.out} and its .md, .png and _reliability.png")
    return 0


def _cmd_bench_router_latency(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.report import write_report
    from routenlp_ray.bench.routing_bench import latency_markdown, run_latency_benchmark

    report = run_latency_benchmark(args.artifact, args.data, split=args.split, queries=args.queries,
                                   repeats=args.repeats, compare_minilm=not args.no_minilm)
    written = write_report(args.out, report, markdown=lambda r: latency_markdown(r, r["command"]))
    print(latency_markdown(written, written["command"]))
    return 0


def _cmd_bench_tasks(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.tasks_bench import run_tasks_benchmark, tasks_markdown, write_tasks_report
    from routenlp_ray.config import load_config

    config = load_config(args.config)
    tasks = benchmark_tasks(args, config)
    report = run_tasks_benchmark(config, args.records, args.data_dir, tasks, split=args.split, seed=args.seed,
                                 epochs=args.epochs)
    print(tasks_markdown(write_tasks_report(report, args.out)))
    print(f"wrote {args.out} and its .md and .png")
    return 0


def register(benches: Subparsers) -> None:
    routing = benches.add_parser(
        "routing",
        help="start-tier router vs baselines on router data folders (train.jsonl, <split>.jsonl, models.json)",
    )
    routing.add_argument("--data", nargs="+", required=True,
                         help="one or more source folders; with several, a cross-source row per source is added")
    routing.add_argument("--split", choices=["validation", "test"], default="validation",
                         help="the split read once per seed; settings are chosen on part of train only")
    routing.add_argument("--out", required=True,
                         help="report .json; .md, .png and _reliability.png are written beside it")
    routing.add_argument("--seed", type=int, default=0, help="first seed")
    routing.add_argument("--seeds", type=int, default=5, help="number of seeds (mean ± sd)")
    routing.add_argument("--epochs", type=int, default=40)
    routing.add_argument("--no-cross-source", action="store_true")
    routing.add_argument("--latency-queries", type=int, default=1000)
    routing.add_argument("--compare-minilm", action="store_true",
                         help="also time the int8 MiniLM encode on 200 of the prompts (the slow path)")
    routing.add_argument("--save-artifact", default=None,
                         help="also save the router trained on every source's train rows (RouterStartPolicy folder)")
    routing.set_defaults(func=_cmd_bench_routing)
    latency = benches.add_parser("router-latency", help="decision p50/p99 and batched throughput of a router artifact")
    latency.add_argument("--artifact", required=True, help="a RouterStartPolicy folder (bench routing --save-artifact)")
    latency.add_argument("--data", nargs="+", required=True, help="source folders whose prompts are decided on")
    latency.add_argument("--split", choices=["validation", "test"], default="validation")
    latency.add_argument("--queries", type=int, default=1000)
    latency.add_argument("--repeats", type=int, default=3)
    latency.add_argument("--no-minilm", action="store_true", help="skip timing the int8 MiniLM encode")
    latency.add_argument("--out", required=True)
    latency.set_defaults(func=_cmd_bench_router_latency)
    tasks_bench = benches.add_parser("tasks", help="all routing policies on recorded outputs of the six tasks")
    add_records_arguments(tasks_bench, epochs=150)
    tasks_bench.add_argument("--out", default="results/bench_tasks.json")
    tasks_bench.set_defaults(func=_cmd_bench_tasks)
