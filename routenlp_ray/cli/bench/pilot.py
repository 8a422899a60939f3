"""``bench pilot`` and ``bench pilot-live``: weeks of drifting traffic with the loop after each week."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from routenlp_ray.cli._common import DEFAULT_DATA_DIR, DEFAULT_LOCAL_CONFIG, Subparsers, replaying_data_dir
from routenlp_ray.cli._options import ModelOptions

# The PilotSettings fields each command takes as options; the rest keep their defaults.
PILOT_FIELDS = ("weeks", "queries_per_week", "arms", "budget_examples", "base_per_task", "calibration_per_task",
                "eval_per_task", "eval_skip", "calibration_rows", "audited_per_task")
LIVE_FIELDS = ("weeks", "queries_per_week", "budget_examples", "base_per_task", "calibration_per_task")


def _pilot_options(fields: Sequence[str]) -> ModelOptions:
    from routenlp_ray.bench.pilot import PilotSettings

    return ModelOptions(PilotSettings, fields, flags={"queries_per_week": "--queries", "budget_examples": "--budget"})


def _cmd_bench_pilot(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.pilot import PilotSettings, reread_pilot, run_pilot
    from routenlp_ray.bench.report import write_report
    from routenlp_ray.bench.pilot_plan import DEFAULT_PLAN, load_plan
    from routenlp_ray.bench.pilot_report import (
        VERDICTS, pilot_markdown, plot_pilot, ratio_ci_text, target_checks)
    from routenlp_ray.config import load_config

    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if args.render_from:
        return _render_pilot(Path(args.render_from), baseline)
    if args.compare:
        return _compare_pilots([Path(p) for p in args.compare], Path(args.out or "results/pilot_comparison.json"))
    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    plan = load_plan(args.plan or DEFAULT_PLAN)
    settings = PilotSettings(**_pilot_options(PILOT_FIELDS).values(args),
                             seeds=list(range(args.seed, args.seed + args.seeds)))
    workdir = Path(args.workdir or f"var/pilot/{plan.name}")
    report = (reread_pilot if args.reread else run_pilot)(config, plan, args.data_dir, workdir, settings)
    # A re-read must not overwrite the run it re-reads.
    args.out = args.out or ("results/pilot_reread.json" if args.reread else "results/pilot.json")
    write_report(args.out, report, markdown=lambda written: pilot_markdown(written, written["command"], baseline),
                 figures={".png": plot_pilot})
    for arm, arm_ratios in report["ratios"].items():
        for key in ("final_week", "summed_over_weeks"):
            r = arm_ratios[key]
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            print(f"{key}: {arm} {r['targeted_improvement']:+.1%}, untargeted {r['untargeted_improvement']:+.1%} "
                  f"over no loop; ratio {ratio}, 95% CI {ratio_ci_text(r)}")
    for check in target_checks(report):
        verdict = VERDICTS[check["met"]]
        print(f"{verdict.upper() if check['met'] is False else verdict}: {check['target']} ({check['evidence']})")
    print(f"wrote {args.out} and its .md and .png")
    return 0


def _read_pilot(path: Path, flag: str) -> dict:
    """A finished pilot's JSON, or a ConfigError naming the flag and the file."""
    from routenlp_ray import ConfigError

    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{flag} {path}: cannot read a pilot report: {exc}") from None
    if report.get("benchmark") != "pilot" or "records" not in report:
        raise ConfigError(f"{flag} {path}: not a `bench pilot` report (no benchmark: pilot and records)")
    from routenlp_ray.bench.pilot import PilotSettings

    # A setting added after the report was made had its default then: a sweep compares like with like.
    report["settings"] = {**PilotSettings().model_dump(mode="json"), **report["settings"]}
    return report


def _render_pilot(path: Path, baseline: dict | None) -> int:
    """The Markdown and plot of a finished pilot, written again from its JSON (which is left as it is)."""
    from routenlp_ray.bench.pilot_report import pilot_markdown, plot_pilot

    report = _read_pilot(path, "--render-from")
    command = report.get("command") or "(the run's command line was not recorded in its JSON)"
    path.with_suffix(".md").write_text(pilot_markdown(report, command, baseline))
    plot_pilot(report, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.md')} and {path.with_suffix('.png')} from {path}")
    return 0


def _compare_pilots(paths: Sequence[Path], out: Path) -> int:
    """Finished pilots (a sweep of one setting) in one table, written to ``out`` and its Markdown."""
    from routenlp_ray import ConfigError
    from routenlp_ray.bench.pilot_report import compare_pilots, comparison_markdown
    from routenlp_ray.bench.report import write_report

    reports = [_read_pilot(path, "--compare") for path in paths]
    try:
        comparison = compare_pilots(reports, [str(p) for p in paths])
    except ValueError as exc:
        raise ConfigError(f"--compare: {exc}") from None
    write_report(out, comparison, markdown=lambda written: comparison_markdown(written, written["command"]))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _cmd_bench_pilot_live(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.pilot import PilotSettings
    from routenlp_ray.bench.pilot_live import LiveCluster, live_markdown, run_live_arm
    from routenlp_ray.bench.report import write_report
    from routenlp_ray.bench.pilot_plan import DEFAULT_PLAN, load_plan
    from routenlp_ray.config import load_config

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    plan = load_plan(args.plan or DEFAULT_PLAN)
    settings = PilotSettings(**_pilot_options(LIVE_FIELDS).values(args), seeds=[args.seed], arms=["targeted"])
    cluster = LiveCluster(address=args.address, dashboard_url=args.dashboard, http_port=args.port)
    report = run_live_arm(config, plan, args.data_dir, Path(args.workdir or f"var/pilot-live/{plan.name}"), settings,
                          cluster, seed=args.seed)
    write_report(args.out, report, markdown=lambda written: live_markdown(written, plan.name, written["command"]))
    print(f"{report['failed_requests']} failed requests; wrote {args.out} and its .md")
    return 0 if report["failed_requests"] == 0 else 1


def register(benches: Subparsers) -> None:
    pilot = benches.add_parser(
        "pilot", help="weeks of drifting traffic through the router with the loop after each week: no loop, "
                      "untargeted and targeted distillation at equal budget, over seeds")
    pilot.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    pilot.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    pilot.add_argument("--plan", default=None, help="drift plan YAML (default: the shipped default plan; "
                                                   "routenlp_ray/bench/plans/ has it and a no-drift plan)")
    pilot.add_argument("--seeds", type=int, default=5)
    pilot.add_argument("--seed", type=int, default=0, help="first seed")
    _pilot_options(PILOT_FIELDS).add_to(pilot)
    pilot.add_argument("--workdir", default=None, help="resumable state (default: var/pilot/<plan name>)")
    pilot.add_argument("--baseline", default=None, help="another plan's pilot JSON to report next to this one")
    pilot.add_argument("--out", default=None,
                       help="report path (default: results/pilot.json; with --reread, results/pilot_reread.json; with "
                            "--compare, results/pilot_comparison.json)")
    pilot.add_argument("--render-from", default=None, metavar="JSON",
                       help="run nothing: write the Markdown and plot again from a finished pilot's JSON")
    pilot.add_argument("--reread", action="store_true",
                       help="serve no traffic and run no loop: read the releases a finished run published (its "
                            "--workdir, with its settings) again on the held-out slice --eval-skip / "
                            "--eval-per-task give, for a blind read on rows no run has read")
    pilot.add_argument("--compare", nargs="+", default=None, metavar="JSON",
                       help="run nothing: finished pilots that differ in one setting (a budget sweep) side by side")
    pilot.set_defaults(func=_cmd_bench_pilot)

    live = benches.add_parser(
        "pilot-live", help="the pilot's targeted arm on the real service: serve run, traffic through the openai client, "
                           "each week's loop a Ray job whose release is hot-swapped under traffic")
    live.add_argument("--address", required=True, help="Ray cluster (GCS) address, host:port (`ray start --head` prints it)")
    live.add_argument("--dashboard", default="http://127.0.0.1:8265", help="the cluster's job server, for ray job submit")
    live.add_argument("--port", type=int, default=8000, help="HTTP port the service listens on")
    live.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    live.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    live.add_argument("--plan", default=None, help="drift plan YAML (default: the shipped default plan)")
    live.add_argument("--seed", type=int, default=0)
    _pilot_options(LIVE_FIELDS).add_to(live)
    live.add_argument("--workdir", default=None, help="resumable state (default: var/pilot-live/<plan name>)")
    live.add_argument("--out", default="results/pilot_live.json")
    live.set_defaults(func=_cmd_bench_pilot_live)
