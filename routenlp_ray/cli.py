"""The ``routenlp`` command."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routenlp_ray._exceptions import ConfigError, RouteNLPError
from routenlp_ray.recording.recorder import DEFAULT_RECORD_MAX_TOKENS
from routenlp_ray.models.export import SMOLLM2_GGUF, SMOLLM2_SOURCE, default_cache_dir

if TYPE_CHECKING:
    from routenlp_ray.bench.serving import ServingApps

DEFAULT_LOCAL_CONFIG = "serve_config.local.yaml"
DEFAULT_DATA_DIR = os.environ.get("ROUTENLP_DATA", "../shared/data")


def _cmd_check(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config

    config = load_config(args.config)
    print(f"{args.config}: OK")
    for tier in config.tiers:
        price = f"${tier.pricing.input_per_1m}/{tier.pricing.output_per_1m} per 1M in/out"
        scaling = f"{tier.autoscaling.min_replicas}-{tier.autoscaling.max_replicas} replicas"
        print(f"  tier {tier.name:<12} {tier.engine.type:<12} {price:<32} {scaling}")
    print(f"  tasks: {', '.join(t.name for t in config.tasks)}")
    print(f"  query log: {config.storage.log_uri}")
    return 0


def serve_executable() -> str | None:
    """Ray's ``serve`` command from this interpreter's environment, even when it is not activated."""
    beside = os.path.join(os.path.dirname(sys.executable), "serve")
    return beside if os.access(beside, os.X_OK) else shutil.which("serve")


def _cmd_serve(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config

    load_config(args.config)  # fail fast, with the field and value, before Ray starts
    if args.serve_run:
        serve_bin = serve_executable()
        if serve_bin is None:
            print("the 'serve' command (ray[serve]) is not on PATH", file=sys.stderr)
            return 2
        os.execv(serve_bin, [serve_bin, "run", args.config])
    from routenlp_ray.local_serve import serve_locally

    return serve_locally(args.config)


def _cmd_export_model(args: argparse.Namespace) -> int:
    from routenlp_ray.models.export import export_hf_folder, read_export

    before = read_export(args.out)
    path = export_hf_folder(args.out, source=args.source, gguf_file=args.gguf_file or None,
                            adapter=args.adapter, dtype=args.dtype)
    after = read_export(path)
    state = "up to date" if before == after else "written"
    print(f"{path}: {state} ({after.source}{' + ' + after.adapter if after and after.adapter else ''}, {args.dtype})")
    return 0


def _cmd_log(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.telemetry import read_records

    log_uri = args.log_uri or load_config(args.config).storage.log_uri
    records = read_records(log_uri, args.stream)
    for record in records[-args.tail:]:
        print(json.dumps(record, ensure_ascii=False))
    return 0



def replaying_data_dir(config: Any, data_dir: str) -> Any:
    """The config with every replay tier also reading ``data_dir``'s files.

    A replay tier stands in for the frontier by answering with recorded references; pointed at
    another folder of the same layout (``--data-dir DIR --split test``), it must know that
    folder's references too, or every query would miss.
    """
    pattern = str(Path(data_dir).expanduser().resolve() / "*" / "*.jsonl")
    data = config.model_dump(mode="json")
    for tier in data["tiers"]:
        if tier["engine"]["type"] == "replay" and pattern not in tier["engine"]["records"]:
            tier["engine"]["records"].append(pattern)
    return type(config).model_validate(data)


def benchmark_tasks(args: argparse.Namespace, config: Any) -> list[str]:
    """``--tasks`` if given, else the six benchmark tasks the config defines."""
    return args.tasks or [t.name for t in config.tasks if t.name in DEFAULT_RECORD_MAX_TOKENS]


def _tasks_with_split(tasks: list[str], data_dir: str, split: str) -> list[str]:
    """The tasks whose data folder has this split (traffic comes from train; fin_summarization has none)."""
    return [task for task in tasks if (Path(data_dir) / task / f"{split}.jsonl").is_file()]


def _add_records_arguments(
    parser: argparse.ArgumentParser, epochs: int | None = None, several: bool = False
) -> None:
    """The options every command that reads recorded tier outputs shares.

    With ``several``, ``--records`` and ``--split`` take lists and every recorded combination is read.
    """
    parser.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    if several:
        parser.add_argument("--records", nargs="+", default=["var/records/embedded"], help="records folders")
    else:
        parser.add_argument("--records", default="var/records/embedded")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the six benchmark tasks in the config")
    if several:
        parser.add_argument("--split", nargs="+", default=["validation"])
    else:
        parser.add_argument("--split", default="validation")
    if epochs is not None:
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--epochs", type=int, default=epochs)


def _add_score_arguments(parser: argparse.ArgumentParser) -> None:
    from routenlp_ray.conformal.scores import UNCERTAINTY_SCORES

    parser.add_argument("--score", choices=[*UNCERTAINTY_SCORES, "learned"], default=None,
                        help="uncertainty score u(m_k, x) for every task (default: each task's score in the config)")
    parser.add_argument("--answer-scorer", default=None, help="learned answer scorer folder, for --score learned")


def _cmd_record(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.recording import Recorder
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    max_tokens = {**DEFAULT_RECORD_MAX_TOKENS, **_task_counts(args.max_tokens, "--max-tokens")}
    recorder = Recorder(config, args.out, batch_size=args.batch_size, max_tokens=max_tokens)
    tasks = benchmark_tasks(args, config)
    for task in tasks:
        examples = load_examples(config.task(task).data_file(args.data_dir, args.split), limit=args.limit, seed=args.seed)
        added = recorder.record(task, args.split, examples, tiers=args.tiers)
        print(f"{task}/{args.split}: {len(examples)} examples, new records per tier: {added}", flush=True)
    return 0


def _cmd_distill_specialists(args: argparse.Namespace) -> int:
    """Ask the frontier tier for its answers on a data split, and distil them into specialist heads."""
    from routenlp_ray.config import load_config
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.teacher import frontier_pairs
    from routenlp_ray.specialists.training import (
        SpecialistTrainingConfig,
        distill_specialists,
        head_kind_for_parser,
    )
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    teacher = make_engine(config.frontier)
    tasks = args.tasks or (config.tier(args.tier).tasks if args.tier else None) or benchmark_tasks(args, config)
    pairs = {}
    for name in tasks:
        task = config.task(name)
        kind = head_kind_for_parser(task.parser)
        examples = load_examples(task.data_file(args.data_dir, args.split), limit=args.limit, seed=args.seed)
        pairs[name], missing = frontier_pairs(teacher, task, kind, [e.input for e in examples])
        if kind == "cache" and args.cache_rows_from_data:
            pairs[name] = _pairs_referencing_rows(args, name, pairs[name])
        print(f"{name}: {len(pairs[name].texts)} pairs from {config.frontier.name!r} ({missing} without an answer), "
              f"{kind} head", flush=True)
    training = SpecialistTrainingConfig(cpus_per_worker=args.cpus, seed=args.seed)
    out = distill_specialists(pairs, args.out, version=args.version or Path(args.out).name, config=training,
                              storage_path=args.storage)
    print(f"wrote specialist artifact {out}")
    return 0


def _cmd_distill_student(args: argparse.Namespace) -> int:
    """Ask the frontier for its answers on a data split, and distil them into a LoRA adapter for a tier."""
    from routenlp_ray.config import load_config
    from routenlp_ray.config.tiers import TransformersEngineConfig
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.distill import DistillConfig, train_lora_adapter
    from routenlp_ray.loop.teacher import frontier_examples
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    tier = config.tier(args.tier)
    if not isinstance(tier.engine, TransformersEngineConfig):
        raise ConfigError(f"--tier {args.tier!r} is a {tier.engine.type!r} tier; a LoRA student needs a transformers tier")
    base = tier.engine.model_copy(update={"adapter_path": None})
    limits = _task_counts(args.limit_per_task, "--limit-per-task")
    teacher = make_engine(config.frontier)
    train, held_out, provenance = [], [], {}
    for name in args.tasks or benchmark_tasks(args, config):
        task = config.task(name)
        rows = load_examples(task.data_file(args.data_dir, args.split), limit=limits.get(name, args.limit) + args.holdout,
                             seed=args.seed)
        examples, missing = frontier_examples(teacher, task, [r.input for r in rows])
        held_out += examples[: args.holdout]
        train += examples[args.holdout :]
        provenance[name] = {"train": len(examples[args.holdout :]), "held_out": len(examples[: args.holdout]),
                            "without_answer": missing}
        print(f"{name}: {provenance[name]['train']} training and {provenance[name]['held_out']} held-out examples "
              f"from {config.frontier.name!r} ({missing} without an answer)", flush=True)
    distill = DistillConfig(
        max_steps=args.steps, batch_size=args.batch_size, max_seq_len=args.max_seq_len, learning_rate=args.lr,
        r=args.rank, alpha=2 * args.rank, eval_every=args.eval_every, patience=args.patience,
        checkpoint_every=args.eval_every, cpus_per_worker=args.cpus, seed=args.seed,
    )
    result = train_lora_adapter(base, train, distill, args.out, args.storage, args.run_name or Path(args.out).name,
                                eval_examples=held_out)
    (Path(args.out) / "student.json").write_text(json.dumps({
        "tier": args.tier, "data_dir": str(Path(args.data_dir)), "split": args.split, "seed": args.seed,
        "teacher": config.frontier.name, "tasks": provenance,
        "held_out_from": f"the same {args.split} split, disjoint from the training examples",
        "command": "routenlp " + " ".join(sys.argv[1:]),
    }, indent=2))
    best = dict(result.evaluations).get(result.best_step) if result.best_step is not None else None
    print(f"wrote LoRA adapter {args.out}: {result.steps} steps, kept step {result.best_step} "
          f"(held-out loss {best}, base {result.evaluations[0][1] if result.evaluations else None})"
          f"{', stopped early' if result.stopped_early else ''}")
    return 0


def _task_counts(items: list[str] | None, option: str) -> dict[str, int]:
    """``TASK=N`` overrides as a mapping; a malformed one fails naming the option and the item."""
    counts = {}
    for item in items or []:
        task, _, value = item.partition("=")
        if not task or not value.isdigit():
            raise ConfigError(f"{option} takes TASK=N with N a whole number, got {item!r}")
        counts[task] = int(value)
    return counts


def _pairs_referencing_rows(args: argparse.Namespace, task: str, pairs: Any) -> Any:
    """The pairs in their data file's order, pointing at it, after checking they are exactly its rows."""
    from routenlp_ray.tasks.data import answer_text, load_examples, task_file

    rows = [(r.input, answer_text(r.reference)) for r in load_examples(task_file(args.data_dir, task, args.split))]
    if args.limit is not None or sorted(t for t, _ in rows) != sorted(pairs.texts):
        raise ConfigError(
            f"--cache-rows-from-data: the frontier did not answer exactly the queries of {task}/{args.split} "
            "(or --limit is set); drop the flag to store the cache's own copy"
        )
    # The file's references stand in for the frontier's answers; say where the two differ (the
    # replay frontier gives whitespace-equal queries one answer).
    answered = dict(zip(pairs.texts, pairs.answers))
    differ = sum(answered[t] != a for t, a in rows)
    print(f"{task}: caching the file's {len(rows)} rows; {differ} references differ from the frontier's answer")
    source = {"path": f"{task}/{args.split}.jsonl", "input_field": "input", "answer_field": "reference"}
    return pairs.model_copy(update={"texts": [t for t, _ in rows], "answers": [a for _, a in rows], "source": source})


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

    config = load_config(args.config)
    score = _score_from_args(args)
    uncertainty: list[float] = []
    correct: list[bool] = []
    loss: list[float] = []
    tiers: list[str] = []
    task_names: list[str] = []
    ids: list[str] = []
    # Each cheap tier is calibrated on every row it has answers for: a tier recorded on a sample
    # (a slow LLM on 300 rows a task) must not shrink a fast tier's calibration set to that sample.
    for cheap, task in itertools.product(config.tiers[:-1], benchmark_tasks(args, config)):
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
    # The quality rule's budget is each task's own 1 - quality_target unless --epsilon fixes one.
    budgets = {t.name: 1 - t.quality_target for t in config.tasks} if args.epsilon is None else None
    calibrator = ConformalCalibrator(
        alpha=args.alpha, method=args.method, epsilon=args.epsilon if args.epsilon is not None else 0.1,
        delta=args.delta, score=score if score is not None else _per_task_score_name(config),
        epsilon_per_task=budgets if args.method == "quality" else None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator.conformalize(np.array(uncertainty), correct, tiers, task_names,
                                loss=loss if args.method == "quality" else None)
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
    from routenlp_ray.config import load_config
    from routenlp_ray.recording.coverage import coverage_markdown, coverage_report, rows_as_dicts

    config = load_config(args.config)
    score = _score_from_args(args)
    tables = _tables_from_args(args, config, score)
    sections, report = [], {"score": args.score, "method": args.method, "repeats": args.repeats, "results": {}}
    for alpha in args.alpha:
        rows = coverage_report(tables, args.sizes, alpha=alpha, repeats=args.repeats, seed=args.seed,
                               method=args.method)
        report["results"][str(alpha)] = rows_as_dicts(rows)
        sections.append(coverage_markdown(rows, title=f"alpha = {alpha}, score = {args.score}, method = {args.method}"))
    report["tasks"] = {t.task: len(t.ids) for t in tables}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    markdown = "\n".join(sections)
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _cmd_train_router(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.routing.training import train_router_policy

    config = load_config(args.config)
    tasks = benchmark_tasks(args, config)
    policy, report = train_router_policy(config, args.records, args.data_dir, tasks, split=args.split,
                                         seed=args.seed, epochs=args.epochs, version=args.version)
    folder = policy.save(Path(args.out) / policy.version, metadata=report)
    print(json.dumps(report, indent=2))
    print(f"saved {folder}; serve it with cascade.start_policy: router and cascade.router_path: {folder}")
    return 0


def _cmd_bench_routing(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.routing_bench import RECOMMENDED, run_routing_benchmark, verdict, write_reports
    from routenlp_ray.routing.fit import FitSettings

    settings = FitSettings(epochs=args.epochs)
    report = run_routing_benchmark(args.data, split=args.split, seeds=range(args.seed, args.seed + args.seeds),
                                   settings=settings, cross_source=not args.no_cross_source,
                                   latency_queries=args.latency_queries, artifact_out=args.save_artifact,
                                   compare_minilm=args.compare_minilm)
    command = "routenlp bench routing " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "routenlp bench routing"
    written = write_reports(report, args.out, command)
    for name, row in report["sources"].items():
        v = verdict(row["summary"])
        s = row["summary"][RECOMMENDED]
        print(f"{name}: router AUC {s['auc']['mean']:.3f} (best baseline {v['best_baseline']} "
              f"{v['best_baseline_auc']:.3f}); cost reduction at 95% {v['router_cost_reduction_95']} "
              f"vs RouteLLM-MF {v['routellm_mf_cost_reduction_95']}")
    lat = report["decision_latency"]
    print(f"decision: p50 {lat['single_p50_ms']:.2f} ms, p99 {lat['single_p99_ms']:.2f} ms, "
          f"{lat['batched_decisions_per_s']:.0f}/s batched")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_bench_router_latency(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.routing_bench import latency_markdown, run_latency_benchmark

    report = run_latency_benchmark(args.artifact, args.data, split=args.split, queries=args.queries,
                                   repeats=args.repeats, compare_minilm=not args.no_minilm)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    markdown = latency_markdown(report, "routenlp bench router-latency " + " ".join(sys.argv[3:]))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


def _cmd_bench_tasks(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.tasks_bench import run_tasks_benchmark, write_reports
    from routenlp_ray.config import load_config

    config = load_config(args.config)
    tasks = benchmark_tasks(args, config)
    report = run_tasks_benchmark(config, args.records, args.data_dir, tasks, split=args.split, seed=args.seed,
                                 epochs=args.epochs)
    paths = write_reports(report, Path(args.out))
    print(Path(paths["markdown"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _serving_apps() -> ServingApps:
    """The Serve app builders of ``deployments/`` for the serving benchmarks.

    The CLI is the top layer, the only library module that reaches up into ``deployments``;
    it hands the builders down so that ``bench`` itself never imports them.
    """
    from deployments.builders import build_routenlp_app, build_tier
    from routenlp_ray.bench.serving import ServingApps

    return ServingApps(router=build_routenlp_app, tier=build_tier)


def _cmd_bench_serving(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.serving import run_serving_benchmark

    report = run_serving_benchmark(
        args.config,
        args.data_dir,
        args.out,
        _serving_apps(),
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


def _cmd_bench_specialist(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.specialist_bench import run_specialist_benchmark
    from routenlp_ray.config import load_config

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    if args.threads:
        data = config.model_dump(mode="json")
        next(t for t in data["tiers"] if t["name"] == args.tier)["engine"]["num_threads"] = args.threads
        config = type(config).model_validate(data)
    report = run_specialist_benchmark(config, args.tier, args.data_dir, per_task=args.per_task,
                                      batch_size=args.batch_size, rounds=args.rounds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    single, batched = report["single_client_ms"], report["batched_answers_per_s"]
    print(f"{report['queries']} queries over {report['tasks']}: one client p50 {single['p50']:.1f} ms, "
          f"p99 {single['p99']:.1f} ms; batched {batched['mean']:.0f} ± {batched['sd']:.0f} answers/s; "
          f"peak RSS {report['peak_rss_mb']:.0f} MB")
    print(f"wrote {out}")
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
    report = run_phased_load_benchmark(args.config, args.data_dir, args.out, _serving_apps(), phases=phases)
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
    report = run_soak_benchmark(args.config, args.data_dir, args.out, _serving_apps(), minutes=args.minutes,
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


def _cmd_bench_pilot(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.pilot import PilotSettings, run_pilot
    from routenlp_ray.bench.pilot_plan import DEFAULT_PLAN, load_plan
    from routenlp_ray.bench.pilot_report import pilot_markdown, plot_pilot

    from routenlp_ray.config import load_config

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    plan = load_plan(args.plan or DEFAULT_PLAN)
    settings = PilotSettings(
        weeks=args.weeks, queries_per_week=args.queries, seeds=list(range(args.seed, args.seed + args.seeds)),
        arms=args.arms, budget_examples=args.budget, eval_per_task=args.eval_per_task,
        calibration_per_task=args.calibration_per_task, base_per_task=args.base_per_task,
    )
    out = Path(args.out)
    workdir = Path(args.workdir or f"var/pilot/{plan.name}")
    report = run_pilot(config, plan, args.data_dir, workdir, settings)
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    command = "routenlp bench pilot " + " ".join(sys.argv[3:])
    out.with_suffix(".md").write_text(pilot_markdown(report, command.strip(), baseline))
    plot_pilot(report, out.with_suffix(".png"))
    for arm, arm_ratios in report["ratios"].items():
        for key in ("final_week", "summed_over_weeks"):
            r = arm_ratios[key]
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            print(f"{key}: {arm} {r['targeted_improvement']:+.1%}, untargeted {r['untargeted_improvement']:+.1%} "
                  f"over no loop; ratio {ratio}, 95% CI {r['ratio_ci95']}")
    print(f"wrote {out} and its .md and .png")
    return 0


def _cmd_bench_pilot_live(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.pilot import PilotSettings
    from routenlp_ray.bench.pilot_live import LiveCluster, live_markdown, run_live_arm
    from routenlp_ray.bench.pilot_plan import DEFAULT_PLAN, load_plan
    from routenlp_ray.config import load_config

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    plan = load_plan(args.plan or DEFAULT_PLAN)
    settings = PilotSettings(
        weeks=args.weeks, queries_per_week=args.queries, seeds=[args.seed], arms=["targeted"],
        budget_examples=args.budget, calibration_per_task=args.calibration_per_task, base_per_task=args.base_per_task,
    )
    cluster = LiveCluster(address=args.address, dashboard_url=args.dashboard, http_port=args.port)
    report = run_live_arm(config, plan, args.data_dir, Path(args.workdir or f"var/pilot-live/{plan.name}"), settings,
                          cluster, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    command = "routenlp bench pilot-live " + " ".join(sys.argv[3:])
    out.with_suffix(".md").write_text(live_markdown(report, plan.name, command.strip()))
    print(f"{report['failed_requests']} failed requests; wrote {out} and its .md")
    return 0 if report["failed_requests"] == 0 else 1


def _cmd_bench_llm_tiers(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.llm_tiers import llm_tiers_markdown, run_llm_tier_benchmark

    sides = {"transformers": (args.transformers_config, args.tier), "vllm-cpu": (args.vllm_config, args.tier)}
    report = run_llm_tier_benchmark(args.out, _serving_apps(), sides, concurrency=tuple(args.concurrency),
                                    requests_per_client=args.requests_per_client, rounds=args.rounds,
                                    max_tokens=args.max_tokens)
    markdown = llm_tiers_markdown(report)
    Path(args.out).with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def _cmd_bench_gpu_smoke(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.gpu_smoke import GPUUnavailableError, run_gpu_smoke

    try:
        report = run_gpu_smoke(args.out, args.data_dir, _serving_apps(), per_task=args.per_task)
    except GPUUnavailableError as exc:
        print(f"routenlp bench gpu-smoke: {exc}", file=sys.stderr)
        return 2
    for task, row in report["per_task"].items():
        print(f"{task}: {row['queries']} queries, answered by {row['answered_by']}, "
              f"median {row['median_latency_s']:.2f} s")
    print(f"{report['gpu']}: wrote {args.out}")
    return 0


def _cmd_bench_streaming(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.streaming_bench import run_streaming_benchmark

    report = run_streaming_benchmark(args.config, args.out, _serving_apps(), tier=args.tier, rounds=args.rounds,
                                     max_tokens=args.max_tokens)
    for mode, result in report["summary"].items():
        ttft, total = result["median_ttft_s"], result["median_total_s"]
        print(f"{mode}: first token {ttft['mean']:.2f} ± {ttft['sd']:.2f} s, whole answer "
              f"{total['mean']:.2f} ± {total['sd']:.2f} s ({result['requests']} requests)")
    print(f"wrote {args.out}")
    return 0


def _cmd_loop_run(args: argparse.Namespace) -> int:
    import yaml

    from routenlp_ray.config import load_config
    from routenlp_ray.loop.iteration import Iteration, LoopSettings

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    settings_data = yaml.safe_load(Path(args.settings).read_text()) if args.settings else {}
    overrides = {"budget_examples": args.budget, "eval_per_task": args.eval_per_task, "eval_tasks": args.tasks,
                 "top_clusters": args.top_clusters, "since": args.since}
    settings_data.update({k: v for k, v in overrides.items() if v is not None})
    if args.steps is not None:
        settings_data.setdefault("distill", {})["max_steps"] = args.steps
    try:
        settings = LoopSettings.model_validate(settings_data)
    except Exception as exc:
        raise ConfigError(f"invalid loop settings: {exc}") from None
    run_id = args.run_id or datetime_run_id()
    tiers = args.student_tier or [settings.student_tier]
    status = 0
    for tier in tiers:
        # Built only now: an iteration starts from the release the one before it published.
        iteration = Iteration(config, settings.model_copy(update={"student_tier": tier}),
                              args.log_uri or config.storage.log_uri, args.data_dir, args.workdir,
                              run_id if len(tiers) == 1 else f"{run_id}-{tier}")
        result = iteration.run(publish=not args.no_publish)
        print(Path(result.report_path).with_suffix(".md").read_text())
        print(f"report: {result.report_path}")
        if not result.gate_passed:
            print(f"{iteration.student.name}: gate failed, nothing was published")
            status = 2
            continue
        print(f"published: {result.published}" if result.published else "not published (no releases.path or --no-publish)")
    return status


def datetime_run_id() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _release_store(args: argparse.Namespace) -> Any:
    from routenlp_ray.config import load_config
    from routenlp_ray.releases import ReleaseStore

    path = args.path or load_config(args.config).with_absolute_paths(os.getcwd()).releases.path
    if not path:
        raise ConfigError("no release store: pass --path or set releases.path in the config")
    return ReleaseStore(path)


def _cmd_release(args: argparse.Namespace) -> int:
    store = _release_store(args)
    if args.action == "list":
        current = store.current_version()
        for version in store.versions():
            print(("* " if version == current else "  ") + version)
        return 0
    if args.action == "current":
        print(store.current_version() or "none")
        return 0
    if args.action == "rollback":
        release = store.rollback()
    else:
        if not args.version:
            raise ConfigError("release activate needs a VERSION")
        release = store.activate(args.version)
    print(f"current release: {release.version}; running replicas switch within releases.poll_interval_s")
    return 0


def _with_engine_threads(config: Any, threads: int) -> Any:
    """The student tiers (transformers, specialist) run ``threads`` torch threads while the loop reads them."""
    tiers = [t.model_copy(update={"engine": t.engine.model_copy(update={"num_threads": threads})})
             if t.engine.type in ("transformers", "specialist") else t for t in config.tiers]
    return config.model_copy(update={"tiers": tiers})


def _cmd_bench_loop(args: argparse.Namespace) -> int:
    from routenlp_ray.bench.loop_experiment import LoopExperimentSettings, run_loop_experiment
    from routenlp_ray.bench.loop_experiment_report import write_loop_experiment_report
    from routenlp_ray.config import load_config
    from routenlp_ray.loop.distill import DistillConfig

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    run_dir = Path(args.workdir) / args.run_id
    storage = config.storage.model_copy(update={"log_uri": str((run_dir / "querylog").resolve()),
                                                "spool_dir": str((run_dir / "spool").resolve())})
    # The experiment starts from the configured adapter and publishes only into its own store.
    releases = config.releases.model_copy(update={"path": None})
    config = config.model_copy(update={"storage": storage, "releases": releases})
    if args.student_threads is not None:
        config = _with_engine_threads(config, args.student_threads)
    settings = LoopExperimentSettings(
        tasks=_tasks_with_split(benchmark_tasks(args, config), args.data_dir, "train"),
        student_tier=args.student_tier, specialist={"cpus_per_worker": args.cpus_per_worker},
        specialist_base_share=args.specialist_base_share,
        seeds=args.seeds, curve_seeds=args.curve_seeds, budget=args.budget,
        top_cost_shares=args.top_cost_shares,
        traffic_per_task=args.traffic_per_task, n_clusters=args.clusters,
        eval_per_task=args.eval_per_task, bootstrap=args.bootstrap, iterations=args.iterations,
        gate_tolerance=args.gate_tolerance, gate_cost_tolerance=args.gate_cost_tolerance, calibration=args.calibration,
        distill=DistillConfig(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              max_seq_len=384, checkpoint_every=max(1, args.steps // 2),
                              cpus_per_worker=args.cpus_per_worker),
    )
    report = run_loop_experiment(config, args.data_dir, args.workdir, args.run_id, settings,
                                 log=lambda line: print(line, flush=True))
    command = "routenlp bench loop " + " ".join(sys.argv[3:])
    markdown = write_loop_experiment_report(report, args.out, command.strip())
    print(markdown.read_text())
    return 0


def _cmd_bench_loop_specialist(args: argparse.Namespace) -> int:
    import torch

    from routenlp_ray.bench.loop_specialist import CachedEncoder, LoopSpecialistSettings, run_loop_specialist
    from routenlp_ray.bench.loop_specialist_report import write_loop_specialist_report
    from routenlp_ray.config import load_config
    from routenlp_ray.models.encoder import MINILM_SOURCE

    if args.headline_fraction not in args.fractions:
        raise ConfigError(f"--headline-fraction {args.headline_fraction} must be one of --fractions {args.fractions}")
    # On a shared CPU, more threads than cores spin instead of working: one thread, one text at a time.
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    settings = LoopSpecialistSettings(
        tasks=args.tasks, seeds=list(range(args.seeds)), pool_per_task=args.pool_per_task,
        validation_per_task=args.validation_per_task,
        min_traffic=args.min_traffic, n_clusters=args.clusters, fractions=args.fractions, bootstrap=args.bootstrap,
        headline_fraction=args.headline_fraction,
    )
    cascade = config.cascade
    report = run_loop_specialist(
        {t: config.task(t) for t in args.tasks}, args.data_dir, settings,
        lambda tier, p, c: config.tier(tier).pricing.cost_usd(p, c),
        CachedEncoder(MINILM_SOURCE, num_threads=args.threads),
        {t: cascade.uncertainty_per_task.get(t, cascade.uncertainty) for t in args.tasks},
        log=lambda line: print(line, flush=True),
    )
    command = "routenlp bench loop-specialist " + " ".join(sys.argv[3:])
    md = write_loop_specialist_report(report, args.out, command.strip())
    print(md.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routenlp", description="RouteNLP on Ray: routing, benchmarks, logs.")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a RouteNLP or serve config file")
    check.add_argument("config", nargs="?", default=DEFAULT_LOCAL_CONFIG)
    check.set_defaults(func=_cmd_check)

    serve = commands.add_parser("serve", help="validate a serve config, then `serve run` it")
    serve.add_argument("config", nargs="?", default=DEFAULT_LOCAL_CONFIG)
    serve.add_argument("--serve-run", action="store_true",
                       help="hand over to Ray's `serve run` instead (Ray's console, signals and bindings)")
    serve.set_defaults(func=_cmd_serve)

    export = commands.add_parser(
        "export-model", help="write a packaged GGUF model (with a LoRA adapter merged in) as a Hugging Face "
        "folder for vLLM, once; nothing is downloaded")
    export.add_argument("--out", default=str(default_cache_dir() / "models" / "smollm2-135m-instruct"),
                        help="the folder to write (default under $ROUTENLP_CACHE or var/cache)")
    export.add_argument("--source", default=SMOLLM2_SOURCE, help="model folder or package:<pkg>")
    export.add_argument("--gguf-file", default=SMOLLM2_GGUF,
                        help="GGUF file inside --source ('' for a folder of safetensors)")
    export.add_argument("--adapter", default=None, help="a LoRA adapter folder to merge in (a distilled student)")
    export.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="weights dtype on disk (the engine may load them in another)")
    export.set_defaults(func=_cmd_export_model)

    log = commands.add_parser("log", help="print the last records of the query log")
    log.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    log.add_argument("--log-uri", default=None, help="read this log instead of the config's")
    log.add_argument("--stream", choices=["queries", "feedback", "events"], default="queries")
    log.add_argument("--tail", type=int, default=10)
    log.set_defaults(func=_cmd_log)

    record = commands.add_parser("record", help="run every tier over a data split once and keep the outputs")
    record.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    record.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    record.add_argument("--out", default="var/records", help="records folder (resumable)")
    record.add_argument("--tasks", nargs="+", default=None, help="default: the six benchmark tasks in the config")
    record.add_argument("--tiers", nargs="+", default=None, help="default: every tier")
    record.add_argument("--split", default="validation")
    record.add_argument("--limit", type=int, default=None, help="examples per task (a seeded sample)")
    record.add_argument("--seed", type=int, default=0)
    record.add_argument("--batch-size", type=int, default=8)
    record.add_argument("--max-tokens", nargs="*", metavar="TASK=N", help="override max tokens per task")
    record.set_defaults(func=_cmd_record)

    distill = commands.add_parser(
        "distill-specialists", help="distil the frontier's answers into specialist heads (a Ray Train job)"
    )
    distill.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    distill.add_argument("--tier", default=None, help="specialist tier whose `tasks` to distil (default: --tasks)")
    distill.add_argument("--tasks", nargs="+", default=None)
    distill.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    distill.add_argument("--split", default="train")
    distill.add_argument("--limit", type=int, default=None, help="queries per task (a seeded sample)")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--cpus", type=float, default=1.0, help="CPUs of the Ray Train worker")
    distill.add_argument("--out", required=True, help="new artifact folder, e.g. artifacts/specialists/v1")
    distill.add_argument("--version", default=None, help="artifact version (default: the folder name)")
    distill.add_argument("--storage", default="var/ray_train", help="Ray Train storage path")
    distill.add_argument("--cache-rows-from-data", action="store_true",
                         help="answer caches reference the data file their pairs are (no copy in the artifact)")
    distill.set_defaults(func=_cmd_distill_specialists)

    student = commands.add_parser(
        "distill-student", help="distil the frontier's answers into a LoRA adapter for a transformers tier (Ray Train)"
    )
    student.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    student.add_argument("--tier", default="smollm2", help="transformers tier whose base model the adapter is for")
    student.add_argument("--tasks", nargs="+", default=None, help="default: the six benchmark tasks in the config")
    student.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    student.add_argument("--split", default="train")
    student.add_argument("--limit", type=int, default=200, help="training queries per task (a seeded sample)")
    student.add_argument("--limit-per-task", nargs="*", metavar="TASK=N", help="override --limit per task")
    student.add_argument("--holdout", type=int, default=10,
                         help="queries per task held out of the same split for early stopping (not trained on)")
    student.add_argument("--steps", type=int, default=300, help="most optimizer steps")
    student.add_argument("--batch-size", type=int, default=8)
    student.add_argument("--max-seq-len", type=int, default=384)
    student.add_argument("--lr", type=float, default=5e-4)
    student.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha is twice it)")
    student.add_argument("--eval-every", type=int, default=25, help="steps between held-out evaluations and checkpoints")
    student.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    student.add_argument("--cpus", type=float, default=1.0, help="CPUs (torch threads) of the Ray Train worker")
    student.add_argument("--seed", type=int, default=0)
    student.add_argument("--out", required=True, help="new adapter folder, e.g. artifacts/students/smollm2-v1")
    student.add_argument("--run-name", default=None, help="Ray Train run (same name = resume; default: --out's name)")
    student.add_argument("--storage", default="var/ray_train", help="Ray Train storage path")
    student.set_defaults(func=_cmd_distill_student)

    calibrate = commands.add_parser("calibrate", help="split-conformal thresholds per (tier, task) from records")
    _add_records_arguments(calibrate, several=True)
    _add_score_arguments(calibrate)
    calibrate.add_argument("--method", choices=["coverage", "risk", "quality"], default="coverage",
                           help="coverage: the paper's rule; risk: Learn-then-Test on the accepted-error rate; "
                                "quality: risk control on the share of queries answered wrong by the tier")
    calibrate.add_argument("--alpha", type=float, default=0.1)
    calibrate.add_argument("--epsilon", type=float, default=None,
                           help="risk: accepted-error bound (default 0.1); quality: the budget of every task "
                                "(default: each task's 1 - quality_target)")
    calibrate.add_argument("--delta", type=float, default=0.1, help="risk, quality: allowed failure probability")
    calibrate.add_argument("--version", default=None)
    calibrate.add_argument("--out", default="var/artifacts/thresholds/current.json")
    calibrate.add_argument("--rows-out", default=None,
                           help="also write the labelled rows the thresholds were fitted on (JSONL), for "
                                "monitoring.calibration_rows: live recalibration pads its window with them")
    calibrate.set_defaults(func=_cmd_calibrate)

    fit_scorer = commands.add_parser("fit-scorer", help="fit the learned answer scorer (P(wrong)) from records")
    _add_records_arguments(fit_scorer, several=True)
    fit_scorer.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    fit_scorer.add_argument("--out", default="var/artifacts/answer_scorer/current")
    fit_scorer.set_defaults(func=_cmd_fit_scorer)

    coverage = commands.add_parser("coverage", help="coverage-violation table by calibration size, from records")
    _add_records_arguments(coverage, several=True)
    _add_score_arguments(coverage)
    coverage.add_argument("--alpha", type=float, nargs="+", default=[0.05, 0.1])
    coverage.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000])
    coverage.add_argument("--repeats", type=int, default=50, help="random calibration/held-out splits per size")
    coverage.add_argument("--method", choices=["coverage", "risk"], default="coverage")
    coverage.add_argument("--seed", type=int, default=0)
    coverage.add_argument("--out", default="results/coverage.json")
    coverage.set_defaults(func=_cmd_coverage)

    train = commands.add_parser("train-router", help="train the difficulty-aware router from records")
    _add_records_arguments(train, epochs=150)
    train.add_argument("--version", default=None, help="artifact version (default: router-<UTC time>)")
    train.add_argument("--out", default="var/artifacts/router")
    train.set_defaults(func=_cmd_train_router)

    loop = commands.add_parser("loop", help="the closed loop: mine, distil, evaluate, gate, publish")
    loop_commands = loop.add_subparsers(dest="loop_command", required=True)
    loop_run = loop_commands.add_parser("run", help="run one loop iteration (the `ray job submit` entrypoint)")
    loop_run.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    loop_run.add_argument("--settings", default=None, help="YAML of LoopSettings (budget, distill, gate ...)")
    loop_run.add_argument("--log-uri", default=None, help="query log to mine (default: the config's)")
    loop_run.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="held-out evaluation data")
    loop_run.add_argument("--workdir", default="var/loop", help="run folders (stages, adapters, reports)")
    loop_run.add_argument("--run-id", default=None, help="same id = resume that run (default: UTC time)")
    loop_run.add_argument("--student-tier", nargs="+", default=None,
                          help="cheap tier(s) to distil into, transformers or specialist (default: the settings'); "
                               "with several, one iteration per tier in turn, each from the release the last published")
    loop_run.add_argument("--budget", type=int, default=None, help="training examples per student")
    loop_run.add_argument("--steps", type=int, default=None, help="LoRA optimizer steps per student")
    loop_run.add_argument("--eval-per-task", type=int, default=None)
    loop_run.add_argument("--tasks", nargs="+", default=None, help="tasks evaluated by the gate")
    loop_run.add_argument("--top-clusters", type=int, default=None)
    loop_run.add_argument("--since", default=None, help="mine queries logged at or after this ISO time")
    loop_run.add_argument("--no-publish", action="store_true", help="evaluate and gate, but publish nothing")
    loop_run.set_defaults(func=_cmd_loop_run)

    release = commands.add_parser("release", help="list, inspect or roll back loop releases")
    release.add_argument("action", choices=["list", "current", "rollback", "activate"])
    release.add_argument("version", nargs="?", default=None, help="for activate")
    release.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    release.add_argument("--path", default=None, help="release store (default: the config's releases.path)")
    release.set_defaults(func=_cmd_release)

    bench = commands.add_parser("bench", help="run a benchmark and write its results to a file")
    benches = bench.add_subparsers(dest="bench", required=True)
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
    _add_records_arguments(tasks_bench, epochs=150)
    tasks_bench.add_argument("--out", default="results/bench_tasks.json")
    tasks_bench.set_defaults(func=_cmd_bench_tasks)
    loop_bench = benches.add_parser("loop", help="one real loop iteration: traffic, mining, distillation, evaluation")
    _add_records_arguments(loop_bench)
    loop_bench.add_argument("--workdir", default="var/loop-bench")
    loop_bench.add_argument("--run-id", default="bench")
    loop_bench.add_argument("--traffic-per-task", type=int, default=300, help="train queries per task sent as traffic")
    loop_bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    loop_bench.add_argument("--curve-seeds", type=int, nargs="+", default=None,
                            help="seeds of the budget sizes after the first (default: --seeds)")
    loop_bench.add_argument("--student-tier", default=None,
                            help="tier distilled into: the LoRA tier (default) or a specialist tier, e.g. specialist")
    loop_bench.add_argument("--specialist-base-share", type=float, default=None,
                            help="specialist student: distil its base on this share of each train split first, "
                                 "and send traffic from the rest only")
    loop_bench.add_argument("--budget", type=int, default=48, help="most training examples per student")
    loop_bench.add_argument("--steps", type=int, default=20, help="LoRA steps per student (the same for every budget)")
    loop_bench.add_argument("--batch-size", type=int, default=8)
    loop_bench.add_argument("--learning-rate", type=float, default=1e-3)
    loop_bench.add_argument("--cpus-per-worker", type=float, default=1.0, help="also the torch threads of the worker")
    loop_bench.add_argument("--student-threads", type=int, default=None,
                            help="torch threads of the transformers tiers while students are evaluated")
    loop_bench.add_argument("--clusters", type=int, default=12, help="failure clusters (fixed, so targeting is a choice)")
    loop_bench.add_argument("--top-cost-shares", type=float, nargs="+", default=[0.4],
                            help="budget sizes: the targeted set is the failures of the fewest costliest clusters "
                                 "covering this share of failure cost; the first is the headline")
    loop_bench.add_argument("--eval-per-task", type=int, default=60, help="validation rows per task (half calibrate)")
    loop_bench.add_argument("--bootstrap", type=int, default=1000)
    loop_bench.add_argument("--gate-tolerance", type=float, default=0.0,
                            help="how far a task's retention may fall and the release still publish")
    loop_bench.add_argument("--calibration", choices=["coverage", "quality"], default="coverage",
                            help="each student's threshold rule (LoopSettings.calibration)")
    loop_bench.add_argument("--gate-cost-tolerance", type=float, default=None,
                            help="also gate on cost: the most the cost reduction may fall (default: quality only)")
    loop_bench.add_argument("--iterations", type=int, choices=[1, 2], default=1,
                            help="2: publish the first release, serve fresh traffic, iterate again from it")
    loop_bench.add_argument("--out", default="results/loop_iteration.json")
    loop_bench.set_defaults(func=_cmd_bench_loop)
    loop_spec = benches.add_parser(
        "loop-specialist", help="targeted vs untargeted distillation into the specialist tier, offline, over seeds"
    )
    loop_spec.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    loop_spec.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    loop_spec.add_argument("--tasks", nargs="+",
                           default=["cs_intent", "cs_response", "fin_ner", "legal_clause", "legal_risk"])
    loop_spec.add_argument("--seeds", type=int, default=5)
    loop_spec.add_argument("--pool-per-task", type=int, default=800, help="train rows drawn per task")
    loop_spec.add_argument("--validation-per-task", type=int, default=400, help="validation rows drawn per task")
    loop_spec.add_argument("--min-traffic", type=int, default=300, help="fewest traffic queries a task may get")
    loop_spec.add_argument("--clusters", type=int, default=16)
    loop_spec.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                           help="budget sizes: share of failure cost the targeted clusters cover")
    loop_spec.add_argument("--headline-fraction", type=float, default=0.5)
    loop_spec.add_argument("--bootstrap", type=int, default=1000)
    loop_spec.add_argument("--threads", type=int, default=1)
    loop_spec.add_argument("--out", default="results/loop_specialist.json")
    loop_spec.set_defaults(func=_cmd_bench_loop_specialist)
    specialist = benches.add_parser("specialist", help="latency, throughput and memory of a specialist tier's engine")
    specialist.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    specialist.add_argument("--tier", default="specialist")
    specialist.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    specialist.add_argument("--per-task", type=int, default=100, help="validation queries per task")
    specialist.add_argument("--batch-size", type=int, default=64)
    specialist.add_argument("--rounds", type=int, default=3)
    specialist.add_argument("--threads", type=int, default=None, help="override the tier's torch threads")
    specialist.add_argument("--out", default="results/bench_specialist.json")
    specialist.set_defaults(func=_cmd_bench_specialist)

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

    pilot = benches.add_parser(
        "pilot", help="weeks of drifting traffic through the router with the loop after each week: no loop, "
                      "untargeted and targeted distillation at equal budget, over seeds")
    pilot.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    pilot.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    pilot.add_argument("--plan", default=None, help="drift plan YAML (default: the shipped default plan; "
                                                   "routenlp_ray/bench/plans/ has it and a no-drift plan)")
    pilot.add_argument("--weeks", type=int, default=6)
    pilot.add_argument("--queries", type=int, default=500, help="queries per week")
    pilot.add_argument("--seeds", type=int, default=5)
    pilot.add_argument("--seed", type=int, default=0, help="first seed")
    pilot.add_argument("--arms", nargs="+", default=["no_loop", "untargeted", "targeted"],
                       choices=["no_loop", "untargeted", "targeted", "targeted_cost"],
                       help="targeted ranks failures by the loop's default rule (novel_first); targeted_cost by "
                            "cost alone, the paper's rule")
    pilot.add_argument("--budget", type=int, default=100, help="distillation examples per week, for each loop arm")
    pilot.add_argument("--base-per-task", type=int, default=600)
    pilot.add_argument("--calibration-per-task", type=int, default=200)
    pilot.add_argument("--eval-per-task", type=int, default=200)
    pilot.add_argument("--workdir", default=None, help="resumable state (default: var/pilot/<plan name>)")
    pilot.add_argument("--baseline", default=None, help="another plan's pilot JSON to report next to this one")
    pilot.add_argument("--out", default="results/pilot.json")
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
    live.add_argument("--weeks", type=int, default=6)
    live.add_argument("--queries", type=int, default=500, help="queries per week")
    live.add_argument("--seed", type=int, default=0)
    live.add_argument("--budget", type=int, default=100)
    live.add_argument("--base-per-task", type=int, default=600)
    live.add_argument("--calibration-per-task", type=int, default=200)
    live.add_argument("--workdir", default=None, help="resumable state (default: var/pilot-live/<plan name>)")
    live.add_argument("--out", default="results/pilot_live.json")
    live.set_defaults(func=_cmd_bench_pilot_live)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RouteNLPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
