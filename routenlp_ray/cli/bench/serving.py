"""``bench serving``, ``bench load`` and ``bench soak``: the embedded default served under traffic."""

from __future__ import annotations

import argparse
import sys

from routenlp_ray.cli._common import DEFAULT_DATA_DIR, DEFAULT_LOCAL_CONFIG, Subparsers
from routenlp_ray.cli.bench._apps import serving_apps


def _cmd_bench_serving(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.serving import run_serving_benchmark

    report = run_serving_benchmark(
        args.config,
        args.data_dir,
        args.out,
        serving_apps(),
        requests=args.requests,
        concurrency_levels=tuple(args.concurrency),
        rounds=args.rounds,
        memory_requests=args.memory_requests,
        parts=tuple(args.only or ("overhead", "memory")),
    )
    for level, result in report.get("ingress_overhead", {}).items():
        print(
            f"{level}: router p50 {result['router']['p50_ms']:.1f} ms / p99 {result['router']['p99_ms']:.1f} ms; "
            f"direct p50 {result['direct']['p50_ms']:.1f} ms / p99 {result['direct']['p99_ms']:.1f} ms; "
            f"added p50 {result['added_p50_ms']:+.1f} ms, p99 {result['added_p99_ms']:+.1f} ms"
        )
    memory = report.get("memory")
    if memory is not None:
        print(f"memory: peak PSS {memory['peak_pss_sum_mb']:.0f} MB (RSS sum {memory['peak_rss_sum_mb']:.0f} MB)")
    print(f"wrote {args.out}")
    return 0


def _cmd_bench_load(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from routenlp_ray.bench.load import DEFAULT_PHASES, run_phased_load_benchmark
    from routenlp_ray.bench.savings import percent

    phases = tuple(
        replace(p, duration_s=p.duration_s * args.time_scale,
                clients=args.concurrency if p.clients > 1 else p.clients, kill=p.kill if args.faults else None)
        for p in DEFAULT_PHASES
    )
    report = run_phased_load_benchmark(args.config, args.data_dir, args.out, serving_apps(), phases=phases)
    for summary in report["phases"]:
        latency = summary["latency_ms"] or {}
        print(f"{summary['phase']['name']:<13} {summary['answered']:>5} answered, {summary['errors']} errors, "
              f"{summary['throughput_rps']:.1f} req/s, p50 {latency.get('p50', float('nan')):.0f} / "
              f"p95 {latency.get('p95', float('nan')):.0f} / p99 {latency.get('p99', float('nan')):.0f} ms; "
              f"replicas {summary['replicas']}")
        print(f"{'':<13} saved {percent(summary['savings']['saved_share'])} of frontier cost; answered by "
              f"{summary['answered_by']}; thresholds {summary['savings']['thresholds_versions']}; "
              f"events {[e['event'] for e in summary['savings']['events']]}"
              + (" ; FLAGGED: savings fell without a quality change" if summary["savings_flag"]["flagged"] else ""))
    print(f"wrote {args.out} and its .md and .png")
    return 0


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.savings import accepted_error_cell, percent
    from routenlp_ray.bench.soak import DriftSpec, parse_phase_plan, run_soak_benchmark

    try:
        plan = parse_phase_plan(args.phase_plan)
        drift = DriftSpec(task=args.drift_task, split=args.drift_split, labels_share=args.drift_labels_share,
                          seed=args.drift_seed, labels=tuple(args.drift_labels) if args.drift_labels else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_soak_benchmark(args.config, args.data_dir, args.out, serving_apps(), minutes=args.minutes,
                                clients=args.clients, pause_s=args.pause_s, tasks=tuple(args.tasks), plan=plan,
                                drift=drift, audit_rate=args.audit_rate)
    for row in report["per_minute"]:
        print(f"min {row['minute']:>3} {row['phase'] or '-':<8} {row['requests']:>5} requests, {row['errors']} errors, "
              f"saved {percent(row['saved_share'])}, accepted-error {accepted_error_cell(row['accepted_error'])}, "
              f"answered by {row['answered_by']}, events {[e['event'] for e in row['events']]}")
    for summary in report["phases"]:
        if summary["savings_flag"]["flagged"]:
            print(f"FLAGGED: savings fell without a quality change in phase {summary['phase']['name']}")
    print(f"wrote {args.out} and its .md and .png")
    return 0


def register(benches: Subparsers) -> None:
    load = benches.add_parser(
        "load", help="the whole embedded default under light, heavy, light traffic: autoscaling, replica kills, latency"
    )
    load.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    load.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    load.add_argument("--concurrency", type=int, default=16, help="clients in the heavy phase")
    load.add_argument("--time-scale", type=float, default=1.0, help="multiply every phase's length")
    load.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True,
                      help="SIGKILL one replica half way through each phase")
    load.add_argument("--out", default="results/bench_load.json")
    load.set_defaults(func=_cmd_bench_load)

    soak = benches.add_parser(
        "soak", help="the embedded default under steady mixed traffic for many minutes, then a drift, with the "
        "monitor, audits and live recalibration on: savings and audited accepted-error per minute"
    )
    soak.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    soak.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    soak.add_argument("--minutes", type=float, default=16.0, help="length of the whole run")
    soak.add_argument("--clients", type=int, default=4)
    soak.add_argument("--pause-s", type=float, default=0.1, help="each client's pause between requests")
    soak.add_argument("--tasks", nargs="+", default=["cs_intent", "legal_risk", "legal_clause", "fin_ner"],
                      help="tasks whose validation queries make the traffic")
    soak.add_argument("--phase-plan", nargs="+", default=["steady=0.5", "drift=0.5"], metavar="KIND=SHARE",
                      help="phases in order, KIND steady or drift, SHARE of the run (relative)")
    soak.add_argument("--drift-task", default="legal_clause", help="the task whose share of traffic drifts")
    soak.add_argument("--drift-split", default="train", help="the split the drifted rows come from")
    soak.add_argument("--drift-labels", nargs="+", default=None, metavar="LABEL",
                      help="the drift task's labels whose rows are sent (instead of a seeded share)")
    soak.add_argument("--drift-labels-share", type=float, default=0.5,
                      help="share of the drift task's labels (a seeded pick) whose rows are sent")
    soak.add_argument("--drift-seed", type=int, default=0)
    soak.add_argument("--audit-rate", type=float, default=None, help="override the monitor's audit rate")
    soak.add_argument("--out", default="results/soak.json")
    soak.set_defaults(func=_cmd_bench_soak)

    serving = benches.add_parser("serving", help="router ingress overhead and memory of the embedded default")
    serving.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    serving.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    serving.add_argument("--out", default="results/bench_serving.json")
    serving.add_argument("--requests", type=int, default=300, help="requests per path, per round and level")
    serving.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    serving.add_argument("--rounds", type=int, default=2)
    serving.add_argument("--memory-requests", type=int, default=24)
    serving.add_argument("--only", nargs="+", choices=["overhead", "memory"], default=None,
                         help="measure only these parts (default: both)")
    serving.set_defaults(func=_cmd_bench_serving)
