"""``calibrate``, ``fit-scorer`` and ``coverage``: conformal thresholds and their checks, from records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.cli._common import Subparsers, add_records_arguments, benchmark_tasks


def _add_score_arguments(parser: argparse.ArgumentParser) -> None:
    from routenlp_ray.conformal.scores import UNCERTAINTY_SCORES

    parser.add_argument("--score", choices=[*UNCERTAINTY_SCORES, "learned"], default=None,
                        help="uncertainty score u(m_k, x) for every task (default: each task's score in the config)")
    parser.add_argument("--answer-scorer", default=None, help="learned answer scorer folder, for --score learned")


def _score_from_args(args: argparse.Namespace) -> Any:
    """The uncertainty score named by ``--score`` (a learned one is loaded from ``--answer-scorer``).

    None means each task's own score, as the config's ``cascade.uncertainty_per_task`` says.
    """
    if args.score != "learned":
        return args.score
    if not args.answer_scorer:
        raise ConfigError("--score learned needs --answer-scorer PATH (fit one with `routenlp fit-scorer`)")
    from routenlp_ray.conformal.answer_scorer import LearnedAnswerScorer

    return LearnedAnswerScorer.load(args.answer_scorer)


def _tables_from_args(args: argparse.Namespace, config: Any, score: Any) -> list[Any]:
    from routenlp_ray.conformal.scores import get_uncertainty_score
    from routenlp_ray.recording.tables import load_tables

    if score is None:
        from routenlp_ray.conformal.selection import TaskScores

        scores = TaskScores(config.cascade)
        return [
            table
            for task in benchmark_tasks(args, config)
            for table in load_tables(config, [Path(r) for r in args.records], Path(args.data_dir), [task],
                                     args.split, scores.for_task(task))
        ]
    callable_score = get_uncertainty_score(score) if isinstance(score, str) else score
    return load_tables(
        config, [Path(r) for r in args.records], Path(args.data_dir), benchmark_tasks(args, config), args.split,
        callable_score,
    )


def _per_task_score_name(config: Any) -> str:
    """How a threshold table made with each task's own score names that score."""
    cascade = config.cascade
    if not cascade.uncertainty_per_task:
        return cascade.uncertainty
    per_task = ",".join(f"{task}={name}" for task, name in sorted(cascade.uncertainty_per_task.items()))
    return f"{cascade.uncertainty} ({per_task})"


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import itertools
    import math
    import warnings
    from datetime import datetime, timezone

    import numpy as np

    from routenlp_ray.config import load_config
    from routenlp_ray.conformal.calibrator import ConformalCalibrator
    from routenlp_ray.recording.coverage import quality_loss
    from routenlp_ray.tasks.data import row_groups

    config = load_config(args.config)
    if args.groups and args.method != "quality":
        raise ConfigError(f"--groups certifies the quality rule per group; it needs --method quality, not {args.method!r}")
    score = _score_from_args(args)
    uncertainty: list[float] = []
    groups: list[str | None] = []
    correct: list[bool] = []
    loss: list[float] = []
    tiers: list[str] = []
    task_names: list[str] = []
    ids: list[str] = []
    # Each cheap tier is calibrated on every row it has answers for: a tier recorded on a sample
    # (a slow LLM on 300 rows a task) must not shrink a fast tier's calibration set to that sample.
    tasks = benchmark_tasks(args, config)
    groups_by_task = {t: row_groups(config.task(t), args.data_dir, args.split) if args.groups else {} for t in tasks}
    for cheap, task in itertools.product(config.tiers[:-1], tasks):
        group_of = groups_by_task[task]
        alone = config.model_copy(update={"tiers": [cheap, config.frontier]})
        try:
            tables = _tables_from_args(argparse.Namespace(**{**vars(args), "tasks": [task]}), alone, score)
        except ValueError:  # no records of this tier for this task
            continue
        for table in tables:
            if not table.served[0]:
                continue  # skipped for this task when serving: nothing to calibrate
            uncertainty += table.uncertainty[:, 0].tolist()
            correct += (table.correct[:, 0] > 0).tolist()
            loss += quality_loss(table)[:, 0].tolist()
            tiers += [cheap.name] * len(table.ids)
            task_names += [table.task] * len(table.ids)
            ids += [str(i) for i in table.ids]
            groups += [group_of.get(str(i)) for i in table.ids]
    # The quality rule's budget is each task's own 1 - quality_target unless --epsilon fixes one.
    budgets = {t.name: 1 - t.quality_target for t in config.tasks} if args.epsilon is None else None
    calibrator = ConformalCalibrator(
        alpha=args.alpha, method=args.method, epsilon=args.epsilon if args.epsilon is not None else 0.1,
        delta=args.delta, score=score if score is not None else _per_task_score_name(config),
        epsilon_per_task=budgets if args.method == "quality" else None, group_rule=args.group_rule,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator.conformalize(np.array(uncertainty), correct, tiers, task_names,
                                loss=loss if args.method == "quality" else None,
                                groups=groups if args.groups else None)
    for warning in caught:
        print(f"warning: {warning.message}")
    version = args.version or f"cal-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    table = calibrator.save(args.out, version)
    if args.rows_out:
        from routenlp_ray.conformal.rows import CalibrationRow, save_calibration_rows

        save_calibration_rows(args.rows_out, (
            CalibrationRow(tier, task, u, ok, id_, None if math.isnan(lost) else lost)
            for tier, task, u, ok, id_, lost in zip(tiers, task_names, uncertainty, correct, ids, loss)
        ))
        print(f"wrote the {len(ids)} calibration rows to {args.rows_out} (monitoring.calibration_rows)")
    for tier, per_task in table.thresholds.items():
        for task, delta in per_task.items():
            counts = calibrator.counts_[tier][task]
            shown = "never accepts" if delta is None else f"accepts {calibrator.score_name} <= {delta:.4f}"
            field = config.task(task).group_field
            rows = [g for g, t, k in zip(groups, task_names, tiers) if t == task and k == tier]
            if args.groups and rows and all(g is not None for g in rows):
                n_groups = len(set(rows))
                if delta is None:
                    shown += f"  (over {n_groups} {field}s: too few to certify unseen {field}s)"
                elif args.group_rule == "exact":
                    shown += f"  (certified over {n_groups} {field}s, for unseen {field}s)"
                else:
                    shown += f"  (over {n_groups} {field}s by their design effect: approximate for unseen {field}s)"
            print(f"{tier:<12} {task:<18} {counts['n_correct']:>4}/{counts['n']:<4} correct  {shown}")
    print(f"wrote {args.out} (version {version}); push it with user_config: {{thresholds_path: {args.out}}}")
    return 0


def _cmd_fit_scorer(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.conformal.answer_scorer import LearnedAnswerScorer

    config = load_config(args.config)
    evidence, correct = [], []
    for table in _tables_from_args(args, config, "mean_nll"):
        for k in range(len(table.tiers) - 1):  # the last tier is never thresholded
            evidence += [row[k] for row in table.answers]
            correct += (table.correct[:, k] > 0).tolist()
    scorer = LearnedAnswerScorer(C=args.C).fit(evidence, correct)
    folder = scorer.save(args.out)
    print(f"fitted on {len(correct)} answers ({sum(correct)} right); saved {folder}")
    print("calibrate on other records with: routenlp calibrate --score learned --answer-scorer", folder)
    return 0


def _cmd_coverage(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.report import write_report
    from routenlp_ray.config import load_config
    from routenlp_ray.recording.coverage import coverage_markdown, coverage_report, rows_as_dicts

    config = load_config(args.config)
    score = _score_from_args(args)
    tables = _tables_from_args(args, config, score)
    score_name = args.score or _per_task_score_name(config)
    sections, report = [], {"score": score_name, "method": args.method, "repeats": args.repeats, "results": {}}
    for alpha in args.alpha:
        rows = coverage_report(tables, args.sizes, alpha=alpha, repeats=args.repeats, seed=args.seed,
                               method=args.method)
        report["results"][str(alpha)] = rows_as_dicts(rows)
        sections.append(coverage_markdown(rows, title=f"alpha = {alpha}, score = {score_name}, method = {args.method}"))
    report["tasks"] = {t.task: len(t.ids) for t in tables}
    markdown = "\n".join(sections)
    write_report(args.out, report, markdown=markdown)
    print(markdown)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def register(commands: Subparsers) -> None:
    calibrate = commands.add_parser("calibrate", help="split-conformal thresholds per (tier, task) from records")
    add_records_arguments(calibrate, several=True)
    _add_score_arguments(calibrate)
    calibrate.add_argument("--method", choices=["coverage", "risk", "quality"], default="coverage",
                           help="coverage: the paper's rule; risk: Learn-then-Test on the accepted-error rate; "
                                "quality: risk control on the share of queries answered wrong by the tier")
    calibrate.add_argument("--alpha", type=float, default=0.1)
    calibrate.add_argument("--epsilon", type=float, default=None,
                           help="risk: accepted-error bound (default 0.1); quality: the budget of every task "
                                "(default: each task's 1 - quality_target)")
    calibrate.add_argument("--delta", type=float, default=0.1, help="risk, quality: allowed failure probability")
    calibrate.add_argument("--groups", action="store_true",
                           help="quality: certify each task that has a group_field (legal_clause: contract, "
                                "legal_risk: document) over its groups, so the bound holds for unseen contracts; "
                                "needs many groups (57 at a 4%% budget and delta 0.1 even with no loss) with "
                                "--group-rule exact")
    calibrate.add_argument("--group-rule", choices=["exact", "design_effect"], default="exact",
                           help="with --groups: exact certifies the loss share of a new group over the groups "
                                "(valid, needs many groups); design_effect runs the row-level test on n / deff rows, "
                                "deff the cluster-robust over the independent variance (approximate, works with "
                                "tens of groups)")
    calibrate.add_argument("--version", default=None)
    calibrate.add_argument("--out", default="var/artifacts/thresholds/current.json")
    calibrate.add_argument("--rows-out", default=None,
                           help="also write the labelled rows the thresholds were fitted on (JSONL), for "
                                "monitoring.calibration_rows: live recalibration pads its window with them")
    calibrate.set_defaults(func=_cmd_calibrate)

    fit_scorer = commands.add_parser("fit-scorer", help="fit the learned answer scorer (P(wrong)) from records")
    add_records_arguments(fit_scorer, several=True)
    fit_scorer.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    fit_scorer.add_argument("--out", default="var/artifacts/answer_scorer/current")
    fit_scorer.set_defaults(func=_cmd_fit_scorer)

    coverage = commands.add_parser("coverage", help="coverage-violation table by calibration size, from records")
    add_records_arguments(coverage, several=True)
    _add_score_arguments(coverage)
    coverage.add_argument("--alpha", type=float, nargs="+", default=[0.05, 0.1])
    coverage.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000])
    coverage.add_argument("--repeats", type=int, default=50, help="random calibration/held-out splits per size")
    coverage.add_argument("--method", choices=["coverage", "risk"], default="coverage")
    coverage.add_argument("--seed", type=int, default=0)
    coverage.add_argument("--out", default="results/coverage.json")
    coverage.set_defaults(func=_cmd_coverage)
