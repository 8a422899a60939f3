"""Targeted vs untargeted distillation into a student tier (LoRA or specialist), through the real loop, over seeds and budgets.

One experiment (``routenlp bench loop``):

1. Traffic: a seeded sample of each task's train split goes through ``RouterService`` with the
   config's real engines in process (``loop_bench.generate_traffic``), so the query log is the one
   the served router writes.
2. For each budget size and seed, one ``Iteration`` runs as ``routenlp loop run`` does, without
   publishing: mine the log with a fixed number of clusters, take the fewest costliest clusters
   covering a share f of the failure cost, distil a targeted student on their failures (at most
   ``budget`` examples) and an untargeted one on as many queries from all traffic (same steps, both
   continuing what the tier serves now: its adapter, or its specialist heads refitted), and read both
   and the current model on one held-out validation slice that no traffic query came from
   (thresholds recalibrated for each student on one half, the cascade read on the other).
3. Statistics: per-seed gains, mean ± sd, and a bootstrap 95% CI of the targeted/untargeted ratio
   and of their difference, over seeds and the held-out queries (paired across students).
4. For each student, the learned start router is retrained on its answers; the report gives the
   share of held-out queries it starts at each tier.
   With a specialist student and ``specialist_base_share``, the base specialist is first distilled
   on a seeded share of each train split and the traffic comes from the rest, so every mined query
   is new to it (the shipped specialist was distilled on whole train splits: traffic from them
   would only repeat its own pairs).
5. Optionally a second iteration: the first seed's headline targeted student is published into a
   release store of the experiment's own, fresh traffic is served and logged, and an iteration mined
   from that log only continues from the release.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.bench.loop_bench import generate_traffic
from routenlp_ray.bench.loop_clusters import cluster_savings, selected_split
from routenlp_ray.bench.loop_specialist import bootstrap_ratio, cost_reduction
from routenlp_ray.bench.ratio_ci import point_ratio
from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.loop.distill import DistillConfig
from routenlp_ray.loop.iteration import HeldOutRows, Iteration, LoopSettings, held_out_rows
from routenlp_ray.loop.specialist_student import SpecialistRefitSettings
from routenlp_ray.recording.tables import TaskTable, in_held_out_half, load_tables
from routenlp_ray.releases import ReleaseStore

STUDENTS = ("targeted", "untargeted")


class LoopExperimentSettings(StrictModel):
    """What the experiment spends; every student gets the same ``distill`` settings."""

    tasks: list[str]
    student_tier: str | None = Field(None, description="The tier distilled into; default: LoopSettings' default.")
    specialist: SpecialistRefitSettings = Field(default_factory=SpecialistRefitSettings)
    specialist_base_share: float | None = Field(
        None, gt=0, lt=1,
        description="Specialist student only: distil the base specialist on this seeded share of each train split "
                    "first, and send traffic only from the rest. None: the configured specialist.",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1,
                             description="Seeds of the first (headline) budget size.")
    curve_seeds: list[int] | None = Field(
        None, min_length=1, description="Seeds of the budget sizes after the first; default: ``seeds``.")
    budget: int = Field(48, ge=1, description="Most examples per student.")
    top_cost_shares: list[float] = Field(
        default_factory=lambda: [0.4], min_length=1,
        description="Budget sizes: the share f of failure cost the targeted clusters cover; the first is the headline.")
    traffic_per_task: int = Field(300, ge=1, description="Train queries per task sent as traffic.")
    traffic_seed: int = 1
    n_clusters: int = Field(12, ge=2, description="Failure clusters (fixed, so targeting is a choice).")
    eval_per_task: int = Field(60, ge=4, description="Validation rows per task (half calibrate).")
    eval_seed: int = 0
    alpha: float = Field(0.1, gt=0, lt=1)
    calibration: Literal["coverage", "quality"] = Field(
        "coverage", description="Each student's threshold rule (LoopSettings.calibration).")
    gate_tolerance: float = Field(
        0.0, ge=0, description="How far a task's retention may fall and the release still publish.")
    gate_cost_tolerance: float | None = Field(
        None, ge=0, description="Also gate on cost: the most the cost reduction may fall; None: quality only.")
    distill: DistillConfig
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the targeted/untargeted ratio.")
    iterations: int = Field(
        1, ge=1, le=2, description="2: publish the first release, serve fresh traffic, iterate again from it.")
    rehearsal_share: float = Field(
        0.25, ge=0, lt=1,
        description="LoRA students: the share of each student's budget drawn from the pairs its current adapter was "
                    "distilled on (LoopSettings.rehearsal_share); 0: the failures alone, as before rehearsal.")


def _loop_settings(settings: LoopExperimentSettings, share: float, seed: int, since: str | None = None) -> LoopSettings:
    return LoopSettings(
        student_tier=settings.student_tier, specialist=settings.specialist,
        top_cost_share=share, n_clusters=settings.n_clusters, budget_examples=settings.budget,
        distill=settings.distill.model_copy(update={"seed": seed}), eval_tasks=settings.tasks,
        eval_per_task=settings.eval_per_task, eval_seed=settings.eval_seed, alpha=settings.alpha, calibration=settings.calibration, seed=seed,
        since=since, gate_tolerance=settings.gate_tolerance, gate_cost_tolerance=settings.gate_cost_tolerance,
        rehearsal_share=settings.rehearsal_share,
    )


def _traffic_once(config: RouteNLPConfig, data_dir: Path, settings: LoopExperimentSettings, folder: Path,
                  seed: int) -> dict[str, Any]:
    """The log is the experiment's input: sent once, also across resumes."""
    marker = folder / f"traffic-{seed}.done"
    if marker.exists():
        return {**json.loads(marker.read_text()), "reused": True}
    started_at = datetime.now(timezone.utc).isoformat()
    exclude = {t: {e.id for e in rows} for t, rows in _base_rows(settings, data_dir).items()}
    traffic = generate_traffic(config, data_dir, settings.tasks, settings.traffic_per_task, seed=seed,
                               exclude=exclude)
    traffic["started_at"] = started_at
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(traffic))
    return traffic


BASE_SEED = 0


class MemoEncoder:
    """An encoder that embeds each text once per run.

    Every seed and student reads the same held-out queries and mines the same log, and the
    router and the per-cluster breakdown embed them again each time; the vectors are the
    wrapped encoder's own.
    """

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:  # dim, model_source, ... of the wrapped encoder
        return getattr(self.encoder, name)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, np.asarray(self.encoder.encode(missing))))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.asarray(self.encoder.encode([]))


def _base_rows(settings: LoopExperimentSettings, data_dir: Path) -> dict[str, list[Any]]:
    """The train rows the experiment's own base specialist is distilled on (none without a base share)."""
    from routenlp_ray.tasks.data import load_examples, task_file

    if settings.specialist_base_share is None:
        return {}
    out = {}
    for task in settings.tasks:
        rows = load_examples(task_file(data_dir, task, "train"), seed=BASE_SEED)
        out[task] = rows[: round(len(rows) * settings.specialist_base_share)]
    return out


def with_base_specialist(config: RouteNLPConfig, data_dir: Path, folder: Path, settings: LoopExperimentSettings,
                         tier: str, log: Callable[[str], None]) -> RouteNLPConfig:
    """``config`` with ``tier`` serving a specialist distilled on the base rows only (built once, then reused)."""
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.teacher import frontier_pairs
    from routenlp_ray.specialists.training import SpecialistTrainingConfig, distill_specialists, head_kind_for_parser

    artifact = folder / "base-specialist"
    if not artifact.exists():
        teacher = make_engine(config.frontier)
        pairs = {}
        for task, rows in _base_rows(settings, data_dir).items():
            spec = config.task(task)
            pairs[task], _ = frontier_pairs(teacher, spec, head_kind_for_parser(spec.parser), [r.input for r in rows])
        log(f"base specialist: distilling {{{', '.join(f'{t}: {len(p.texts)}' for t, p in pairs.items())}}} pairs")
        distill_specialists(pairs, artifact, f"base-{settings.specialist_base_share:g}",
                            SpecialistTrainingConfig(cpus_per_worker=settings.specialist.cpus_per_worker),
                            storage_path=folder / "ray_train", run_name="base-specialist")
    tiers = [t.model_copy(update={"engine": t.engine.model_copy(update={"path": str(artifact.resolve())})})
             if t.name == tier else t for t in config.tiers]
    return config.model_copy(update={"tiers": tiers})


def _variant_rows(iteration: Iteration, trained: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, HeldOutRows]]:
    out = {}
    for variant in ("base", *STUDENTS):
        tables = _variant_tables(iteration, trained, variant, tasks)
        out[variant] = {rows.task: rows for rows in held_out_rows(tables, iteration.threshold_for)}
    return out


_TABLES: dict[tuple[str, ...], list[TaskTable]] = {}


def _variant_tables(iteration: Iteration, trained: dict[str, Any], variant: str, tasks: list[str]) -> list[TaskTable]:
    artifact = trained[variant]["artifact_dir"] if variant != "base" else iteration.current_artifact
    folder = iteration.records_dir(variant)
    # Loading scores every answer again (BERTScore for cs_response takes a minute on a CPU); one
    # records folder holds one student's answers, and the base's folder is shared by every seed.
    key = (str(folder.resolve()), str(artifact), iteration.settings.eval_split, *tasks)
    if key not in _TABLES:
        _TABLES[key] = load_tables(iteration.variant_config(artifact), [folder], iteration.data_dir, tasks,
                                   [iteration.settings.eval_split])
    return _TABLES[key]


def paired_cost_rows(rows: dict[str, dict[str, HeldOutRows]], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """Per held-out query, each variant's cost and the frontier's, aligned by id across variants."""
    out: dict[str, list[float]] = {"frontier": [], "base": [], "targeted": [], "untargeted": []}
    for task in tasks:
        position = {v: {i: k for k, i in enumerate(rows[v][task].ids)} for v in ("base", *STUDENTS)}
        common = set(position["base"]).intersection(*(position[v] for v in STUDENTS))
        for i in sorted(common):
            out["frontier"].append(float(rows["base"][task].frontier_cost[position["base"][i]]))
            for variant in ("base", *STUDENTS):
                out[variant].append(float(rows[variant][task].paid[position[variant][i]]))
    return {k: np.asarray(v) for k, v in out.items()}


def router_start_shares(iteration: Iteration, trained: dict[str, Any], variant: str, tasks: list[str],
                        encoder: Any, seed: int) -> dict[str, Any]:
    """Retrain the learned start router on this student's answers, and where it starts held-out queries.

    Fitted and its per-task targets chosen on the calibration half only; the shares and the
    router + cascade cost are read on the other half (the one every cascade figure is read on).
    """
    from routenlp_ray.recording.coverage import cascade_outcome
    from routenlp_ray.routing.learned_policy import choose_targets, start_indices
    from routenlp_ray.routing.training import train_router

    tables = _variant_tables(iteration, trained, variant, tasks)
    halves = [np.array([in_held_out_half(i) for i in t.ids]) for t in tables]
    fit = [t.rows(~h) for t, h in zip(tables, halves)]
    test = [t.rows(h) for t, h in zip(tables, halves)]
    X = {t.task: encoder.encode(t.inputs) for t in fit}
    router = train_router(fit, X, fit[0].tiers, seed, epochs=150)
    fit_proba = np.concatenate([router.predict_proba(X[t.task], [t.task] * len(t.ids)) for t in fit])
    targets = choose_targets(
        fit_proba, np.concatenate([t.correct for t in fit]), np.concatenate([t.cost for t in fit]),
        [t.task for t in fit for _ in t.ids], {task: iteration.config.task(task).quality_target for task in tasks},
    )
    starts, paid, frontier = [], 0.0, 0.0
    for calib, held in zip(fit, test):
        proba = router.predict_proba(encoder.encode(held.inputs), [held.task] * len(held.ids))
        start = start_indices(proba, [targets[held.task]] * len(held.ids))
        threshold = iteration.threshold_for(calib)
        _, cascade_paid, _ = cascade_outcome(held, [threshold, None])
        # Starting at the frontier skips the student; starting at the student runs the cascade.
        paid += float(np.where(start == 0, cascade_paid, held.cost[:, -1]).sum())
        frontier += float(held.cost[:, -1].sum())
        starts.append(start)
    start_all = np.concatenate(starts)
    tiers = fit[0].tiers
    return {
        "targets": targets,
        "start_share": {tier: float((start_all == k).mean()) for k, tier in enumerate(tiers)},
        "router_cascade_cost_reduction": 1 - paid / frontier if frontier else 0.0,
    }


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def run_loop_experiment(
    config: RouteNLPConfig,
    data_dir: str | Path,
    workdir: str | Path,
    run_id: str,
    settings: LoopExperimentSettings,
    encoder: Any = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the whole experiment; every stage is cached under ``workdir/run_id``."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    folder = Path(workdir) / run_id
    if encoder is None:
        from routenlp_ray.models.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    encoder = MemoEncoder(encoder)
    if settings.specialist_base_share is not None:
        tier = config.tier(settings.student_tier) if settings.student_tier else None
        if tier is None or tier.engine.type != "specialist":
            raise ConfigError(f"specialist_base_share needs student_tier to name a specialist tier, "
                              f"got {settings.student_tier!r}")
        config = with_base_specialist(config, data_dir, folder, settings, tier.name, log)
    traffic = _traffic_once(config, data_dir, settings, folder, settings.traffic_seed)
    log(f"traffic: {traffic}")

    runs: dict[int, list[dict[str, Any]]] = {}
    iterations = None

    def one_budget(share: float, seeds: list[int]) -> Iteration:
        for seed in seeds:
            log(f"cost share {share}, seed {seed}")
            iteration = Iteration(config, _loop_settings(settings, share, seed), config.storage.log_uri, data_dir,
                                  folder / "runs", _run_id(settings, share, seed), encoder=encoder)
            result = iteration.run(publish=False)
            runs.setdefault(share, []).append(_seed_record(iteration, result.report, settings, encoder, seed,
                                                           with_router=share == settings.top_cost_shares[0]))
        return iteration

    first = one_budget(settings.top_cost_shares[0], settings.seeds)
    # The second iteration before the rest of the curve: it needs the headline run, not the curve.
    if settings.iterations > 1:
        iterations = _second_iteration(config, data_dir, folder, settings, encoder, log)
    for share in settings.top_cost_shares[1:]:
        one_budget(share, settings.curve_seeds or settings.seeds)
    report: dict[str, Any] = {
        "settings": settings.model_dump(mode="json"),
        "traffic": traffic,
        "student_tier": first.student.name,
        "student_kind": "specialist" if first.is_specialist else "lora",
        "starts_from": first.starts_from,
        "curve": [_summarise_budget(share, runs[share], settings) for share in settings.top_cost_shares],
    }
    report["headline"] = report["curve"][0]
    if iterations is not None:
        report["iterations"] = iterations
    report["wall_s"] = time.perf_counter() - started
    return report


def _seed_record(iteration: Iteration, report: dict[str, Any], settings: LoopExperimentSettings, encoder: Any,
                 seed: int, with_router: bool) -> dict[str, Any]:
    """What one seed's iteration showed, with the per-query rows the bootstrap needs."""
    trained = {v: {"artifact_dir": report["evaluation_artifacts"][v]} for v in ("base", *STUDENTS)}
    rows = _variant_rows(iteration, trained, settings.tasks)
    paired = paired_cost_rows(rows, settings.tasks)
    inputs = {i: text for table in _variant_tables(iteration, trained, "base", settings.tasks)
              for i, text in zip(table.ids, table.inputs)}
    per_cluster = cluster_savings(iteration.mine(), iteration.log_uri, rows, inputs, encoder)
    evaluation = report["evaluation"]
    record: dict[str, Any] = {
        "seed": seed,
        "budget": report["budget"]["examples_per_student"],
        "rehearsed": report["budget"].get("rehearsed_per_student", 0),
        "mining": {k: report["mining"][k] for k in ("queries", "failures", "clusters")},
        "selected_clusters": [
            {k: c[k] for k in ("cluster", "size", "tasks", "share", "cost_usd")} for c in report["mining"]["top_clusters"]
        ],
        "selected_cost_share": sum(c["share"] for c in report["mining"]["top_clusters"]),
        "targeted_tasks": report["budget"]["targeted_tasks"],
        "untargeted_tasks": report["budget"]["untargeted_tasks"],
        "cost_reduction": {v: evaluation[v]["cost_reduction"] for v in ("base", *STUDENTS)},
        "quality_retention": {v: evaluation[v]["quality_retention"] for v in ("base", *STUDENTS)},
        # Threshold-free: the share of held-out queries the student itself answers right.
        "accuracy": {v: evaluation[v]["cheap_accuracy"] for v in ("base", *STUDENTS)},
        "gain": {v: cost_reduction(paired[v], paired["frontier"]) - cost_reduction(paired["base"], paired["frontier"])
                 for v in STUDENTS},
        "per_task": {task: {v: evaluation[v]["per_task"][task] for v in ("base", *STUDENTS)} for task in settings.tasks},
        "gate": report["gate"],
        # What the same gate would say of the untargeted student, had it been the candidate.
        "untargeted_gate": dict(zip(("passed", "reasons"), iteration.gate(evaluation, "untargeted"))),
        "training": report["training"],
        "clusters": per_cluster,
        "gain_by_cluster": selected_split(per_cluster),
        "_rows": paired,
    }
    if with_router:
        record["router"] = {v: router_start_shares(iteration, trained, v, settings.tasks, encoder, seed)
                            for v in ("base", *STUDENTS)}
    return record


def _run_id(settings: LoopExperimentSettings, share: float, seed: int) -> str:
    # The headline keeps the short name, so its runs serve every curve that shares it.
    suffix = "" if share == settings.top_cost_shares[0] else f"-f{round(share * 100)}"
    return f"b{settings.budget}{suffix}-s{seed}"


def _summarise_budget(share: float, seeds: list[dict[str, Any]], settings: LoopExperimentSettings) -> dict[str, Any]:
    gains = {v: [s["gain"][v] for s in seeds] for v in STUDENTS}
    mean_t, mean_u = float(np.mean(gains["targeted"])), float(np.mean(gains["untargeted"]))
    summary = {
        "top_cost_share": share,
        "budget_cap": settings.budget,
        "examples": _mean_sd([s["budget"] for s in seeds]),
        "rehearsed": _mean_sd([s.get("rehearsed", 0) for s in seeds]),
        "selected_cost_share": _mean_sd([s["selected_cost_share"] for s in seeds]),
        "gain": {v: _mean_sd(gains[v]) for v in STUDENTS},
        "ratio": point_ratio(mean_t, mean_u),
        "bootstrap": bootstrap_ratio([s["_rows"] for s in seeds], settings.bootstrap),
        "cost_reduction": {v: _mean_sd([s["cost_reduction"][v] for s in seeds]) for v in ("base", *STUDENTS)},
        "quality_retention": {v: _mean_sd([s["quality_retention"][v] for s in seeds]) for v in ("base", *STUDENTS)},
        "accuracy": {v: _mean_sd([s["accuracy"][v] for s in seeds]) for v in ("base", *STUDENTS)},
        "accuracy_gain": {v: _mean_sd([s["accuracy"][v] - s["accuracy"]["base"] for s in seeds]) for v in STUDENTS},
        "per_task": {
            task: {
                "base_cost_reduction": _mean_sd([s["per_task"][task]["base"]["cost_reduction"] for s in seeds]),
                "base_accuracy": _mean_sd([s["per_task"][task]["base"]["cheap_accuracy"] for s in seeds]),
                **{f"{v}_accuracy_gain": _mean_sd([s["per_task"][task][v]["cheap_accuracy"]
                                                   - s["per_task"][task]["base"]["cheap_accuracy"] for s in seeds])
                   for v in STUDENTS},
                **{f"{v}_retention": _mean_sd([s["per_task"][task][v]["quality_retention"] for s in seeds])
                   for v in ("base", *STUDENTS)},
                **{f"{v}_gain": _mean_sd([s["per_task"][task][v]["cost_reduction"]
                                          - s["per_task"][task]["base"]["cost_reduction"] for s in seeds])
                   for v in STUDENTS},
                "targeted_examples": _mean_sd([s["targeted_tasks"].get(task, 0) for s in seeds]),
                "untargeted_examples": _mean_sd([s["untargeted_tasks"].get(task, 0) for s in seeds]),
            }
            for task in settings.tasks
        },
        "gain_by_cluster": {v: {side: _mean_sd([s["gain_by_cluster"][v][side] for s in seeds])
                                for side in ("selected", "other")} for v in STUDENTS},
        "seeds": [{k: v for k, v in s.items() if k != "_rows"} for s in seeds],
    }
    if all("router" in s for s in seeds):
        summary["router"] = {
            v: {
                "start_share": {tier: _mean_sd([s["router"][v]["start_share"][tier] for s in seeds])
                                for tier in seeds[0]["router"][v]["start_share"]},
                "router_cascade_cost_reduction": _mean_sd([s["router"][v]["router_cascade_cost_reduction"]
                                                           for s in seeds]),
            }
            for v in ("base", *STUDENTS)
        }
    return summary


def _second_iteration(config: RouteNLPConfig, data_dir: Path, folder: Path, settings: LoopExperimentSettings,
                      encoder: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Publish the first iteration's targeted student, serve fresh traffic, and iterate from that release."""
    store_path = folder / "releases"
    looped = config.model_copy(update={"releases": config.releases.model_copy(update={"path": str(store_path)})})
    share, seed = settings.top_cost_shares[0], settings.seeds[0]
    name = _run_id(settings, share, seed)
    runs = folder / "runs"
    store = ReleaseStore(store_path)
    if store.current() is None:
        # Built before anything is published, so it starts where the first iteration started; its
        # stages are cached, so this only recalibrates and publishes.
        first = Iteration(looped, _loop_settings(settings, share, seed), config.storage.log_uri, data_dir, runs,
                          name, encoder=encoder)
        if first.run(publish=True).published is None:
            return {"published": None, "second": None, "first": _iteration_summary(_report(runs / name)),
                    "note": "the first iteration's gate failed, so there is no release to continue from"}
    release = store.current()
    first_report = _report(runs / name)
    # The second traffic is served by the release, so its log is the one the release produced.
    student = first_report["student_tier"]
    artifact = str(release.adapter_for(student))
    tiers = [t.model_copy(update={"engine": t.engine.model_copy(update={t.release_artifact_field(): artifact})})
             if t.name == student else t for t in looped.tiers]
    # A log of its own: the first traffic's runs (the budget curve among them) must never mine it.
    storage = looped.storage.model_copy(update={"log_uri": str(folder / "querylog-iteration2"),
                                                "spool_dir": str(folder / "spool-iteration2")})
    traffic = _traffic_once(looped.model_copy(update={"tiers": tiers, "storage": storage}), data_dir, settings,
                            folder, settings.traffic_seed + 1)
    log(f"second traffic: {traffic}")
    second = Iteration(looped, _loop_settings(settings, share, seed, since=traffic["started_at"]),
                       storage.log_uri, data_dir, runs, f"iteration2-{name}", encoder=encoder)
    result = second.run(publish=True)
    first = _iteration_summary(first_report)
    # The headline runs rewrite the first run's report unpublished on every resume; the store knows.
    if release.version == f"loop-{name}":
        first["published"] = release.version
    return {
        "release_1": release.version,
        "traffic_2": traffic,
        "first": first,
        "second": _iteration_summary(result.report),
    }


def _report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def _iteration_summary(report: dict[str, Any]) -> dict[str, Any]:
    ev = report["evaluation"]
    return {
        "run_id": report["run_id"],
        "starts_from": report["starts_from"],
        "queries_mined": report["mining"]["queries"],
        "failures": report["mining"]["failures"],
        "cost_reduction": {v: ev[v]["cost_reduction"] for v in ("base", *STUDENTS)},
        "quality_retention": {v: ev[v]["quality_retention"] for v in ("base", *STUDENTS)},
        "gate": report["gate"],
        "published": report["published"],
    }
