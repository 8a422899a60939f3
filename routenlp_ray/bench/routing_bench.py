"""``routenlp bench routing``: the start-tier router against strong baselines on real multi-model data.

Per source folder (router_zeroeval, router_mmlu_pro, router_judgments) and seed:

1. ``train`` is split (by seed) into a fit slice and a tune slice. Every policy is fitted on
   the fit slice; every setting (the router's head kind, kNN's k, the weak model of the
   pairwise routers, each policy's operating point for a quality target) is chosen on the tune
   slice. The evaluated split (``validation`` by default, ``test`` when asked) is read once.
2. On the evaluated split each policy gives a quality-cost curve (its settings swept), its AUC,
   and its cost reduction at 95% and 99% of the best single model's quality, two ways:
   ``at_chosen_setting`` (the setting the tune slice picked; its realised quality is reported
   with it) and ``curve`` (the cheapest point of the evaluated curve reaching the quality: a
   property of the curve, like the AUC, which is how routing papers report it).
   The reference "best single model" is the best one on train, read on the evaluated split.

A cross-source row trains on the other sources and evaluates on the one left out, among the
models the sources share (``canonical_model``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.bench.curves import (
    OperatingPoint,
    area_under_curve,
    cost_at_quality,
    oracle_points,
    pareto_front,
    routed_point,
)
from routenlp_ray.bench.report import write_report
from routenlp_ray.models.embedding_cache import embed_cached
from routenlp_ray.routing.baselines import KNNRouter, MatrixFactorizationRouter, WinRateRouter
from routenlp_ray.routing.data import (
    RouterDataset,
    check_splits_disjoint,
    concat_sources,
    load_source,
    source_name,
)
from routenlp_ray.routing.fit import (
    LAMBDAS,
    FitSettings,
    auc,
    best_single,
    choose_setting,
    fit_router,
    split_fit_tune,
    utility_choice,
)

TARGETS = (0.95, 0.99)
THRESHOLDS = np.round(np.linspace(0.0, 1.0, 51), 3)
KNN_KS = (5, 10, 20, 50, 100)
RECOMMENDED = "router"


# -- curves on one split ---------------------------------------------------------------------------
def utility_curve(scores: np.ndarray, mean_cost: np.ndarray, data: RouterDataset) -> list[OperatingPoint]:
    return [routed_point(utility_choice(scores, mean_cost, lam), data.quality, data.cost, data.models, float(lam))
            for lam in LAMBDAS]


def pair_curve(p_strong: np.ndarray, strong: int, weak: int, data: RouterDataset) -> list[OperatingPoint]:
    return [routed_point(np.where(p_strong >= t, strong, weak), data.quality, data.cost, data.models, float(t))
            for t in THRESHOLDS]


def random_curve(front: Sequence[int], data: RouterDataset, seed: int) -> list[OperatingPoint]:
    """Random routing at matched cost: mix consecutive single models of the (fit-slice) Pareto front.

    The setting ``s`` sends a query to ``front[floor(s) + 1]`` with probability ``s - floor(s)``.
    """
    draws = np.random.default_rng(seed).random(len(data))
    points = []
    for seg in range(max(len(front) - 1, 1)):
        lo, hi = front[seg], front[min(seg + 1, len(front) - 1)]
        for p in np.linspace(0, 1, 11):
            choice = np.where(draws < p, hi, lo)
            points.append(routed_point(choice, data.quality, data.cost, data.models, seg + float(p)))
    return points


def _as_tuples(points: Sequence[OperatingPoint]) -> list[tuple[float, float, float]]:
    return [(p.quality, p.cost, float(p.setting)) for p in points]  # type: ignore[arg-type]


def single_front(data: RouterDataset) -> list[int]:
    """Indices of single models not beaten on both mean cost and quality, cheapest first."""
    q, c = np.nanmean(data.quality, axis=0), np.nanmean(data.cost, axis=0)
    front: list[int] = []
    for k in np.argsort(c, kind="stable"):
        if not front or q[k] > q[front[-1]]:
            front.append(int(k))
    return front


class Policy:
    """A fitted policy: its curve on any split, and the settings it chose on the tune slice."""

    def __init__(self, curve: Any, tune_points: list[tuple[float, float, float]], extra: dict[str, Any] | None = None):
        self.curve = curve  # (data, X) -> list[OperatingPoint], settings swept
        self.tune_points = tune_points
        self.extra = extra or {}

    def setting_for(self, quality_needed: float) -> float:
        return choose_setting(self.tune_points, quality_needed)


def fit_policies(train: RouterDataset, X: np.ndarray, seed: int, settings: FitSettings) -> dict[str, Policy]:
    """Every policy fitted on the train rows' fit slice, with its tune-slice curve."""
    fit_rows, tune_rows = split_fit_tune(len(train), settings.tune_fraction, seed)
    fit, tune = train.subset(fit_rows), train.subset(tune_rows)
    X_fit, X_tune = X[fit_rows], X[tune_rows]
    mean_cost = np.nanmean(fit.cost, axis=0)
    max_cost = float(np.nanmean(tune.cost, axis=0).max())
    policies: dict[str, Policy] = {}

    def add_utility(name: str, scorer: Any, extra: dict[str, Any] | None = None) -> None:
        tune_curve = utility_curve(scorer(X_tune, tune.tasks), mean_cost, tune)
        policies[name] = Policy(lambda d, Xd, s=scorer: utility_curve(s(Xd, d.tasks), mean_cost, d),
                                _as_tuples(tune_curve), extra)

    # The router: fit_router chooses the head kind itself; each head is also shown on its own.
    router = fit_router(train, X, target=TARGETS[0], settings=settings, seed=seed)
    add_utility(RECOMMENDED, router.predict_proba,
                {"head": router.report["head"], "tune_auc": router.report["tune_auc"], "model": router})
    for head, model in router.candidates_.items():
        add_utility(f"router_{head}_head", model.predict_proba)

    # kNN: k chosen by AUC on the tune slice.
    knn_auc = {}
    for k in KNN_KS:
        model = KNNRouter(k).fit(X_fit, fit.quality)
        knn_auc[k] = auc([(p.quality, p.cost) for p in utility_curve(model.predict_quality(X_tune), mean_cost, tune)],
                         max_cost)
    k_best = max(knn_auc, key=lambda k: knn_auc[k])
    knn = KNNRouter(k_best).fit(X_fit, fit.quality)
    add_utility("knn", lambda Xd, _t: knn.predict_quality(Xd), {"k": k_best})

    # RouteLLM matrix factorisation, N-way (win rate against the fit slice's best model) and pairwise.
    strong = best_single(fit.quality, fit.cost)
    mf = MatrixFactorizationRouter(len(train.models), random_state=seed).fit(X_fit, fit.quality)
    add_utility("routellm_mf", lambda Xd, _t: mf.win_rate_against(Xd, strong), {"reference": train.models[strong]})
    front = single_front(fit)
    weak_candidates = [k for k in front if k != strong and fit.cost[:, k].mean() < fit.cost[:, strong].mean()] or [0]
    pair_auc = {}
    for weak in weak_candidates:
        pts = pair_curve(mf.pair_win_rate(X_tune, strong, weak), strong, weak, tune)
        pair_auc[weak] = auc([(p.quality, p.cost) for p in pts], max_cost)
    weak = max(pair_auc, key=lambda w: pair_auc[w])
    policies["routellm_mf_pairwise"] = Policy(
        lambda d, Xd: pair_curve(mf.pair_win_rate(Xd, strong, weak), strong, weak, d),
        _as_tuples(pair_curve(mf.pair_win_rate(X_tune, strong, weak), strong, weak, tune)),
        {"strong": train.models[strong], "weak": train.models[weak]},
    )
    binary = WinRateRouter(strong, weak).fit(X_fit, fit.quality)
    policies["binary_winrate"] = Policy(
        lambda d, Xd: pair_curve(binary.p_strong(Xd), strong, weak, d),
        _as_tuples(pair_curve(binary.p_strong(X_tune), strong, weak, tune)),
        {"strong": train.models[strong], "weak": train.models[weak]},
    )
    policies["random"] = Policy(lambda d, Xd: random_curve(front, d, seed), _as_tuples(random_curve(front, tune, seed)),
                                {"front": [train.models[k] for k in front]})
    policies["_tune"] = Policy(None, [], {"tune_best_quality": float(np.nanmean(tune.quality[:, strong])),
                                          "best_single": strong})
    return policies


def _reduction(cost: float | None, reference: float) -> float | None:
    return None if cost is None else 1.0 - cost / reference


def calibration(proba: np.ndarray, quality: np.ndarray, models: Sequence[str], bins: int = 10) -> dict[str, Any]:
    """ECE per model (quality may be soft: its mean per bin is the observed rate) and reliability points."""
    edges = np.linspace(0, 1, bins + 1)
    per_model = {}
    for k, name in enumerate(models):
        p, q = proba[:, k], quality[:, k]
        which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        ece, points = 0.0, []
        for b in range(bins):
            inside = which == b
            if inside.any():
                ece += inside.mean() * abs(p[inside].mean() - q[inside].mean())
                points.append([float(p[inside].mean()), float(q[inside].mean()), int(inside.sum())])
        per_model[name] = {"ece": float(ece), "reliability": points}
    return per_model


def evaluate(train: RouterDataset, X_train: np.ndarray, test: RouterDataset, X_test: np.ndarray, seed: int,
             settings: FitSettings) -> dict[str, Any]:
    """Fit every policy on ``train`` (settings on its tune slice) and read each once on ``test``."""
    policies = fit_policies(train, X_train, seed, settings)
    tune_info = policies.pop("_tune").extra
    best = tune_info["best_single"]
    ref_quality = float(np.nanmean(test.quality[:, best]))
    ref_cost = float(np.nanmean(test.cost[:, best]))
    max_cost = float(np.nanmean(test.cost, axis=0).max())
    curves: dict[str, list[OperatingPoint]] = {}
    results: dict[str, Any] = {}
    for name, policy in policies.items():
        points = policy.curve(test, X_test)
        curves[name] = points
        by_setting = {float(p.setting): p for p in points}  # type: ignore[arg-type]
        entry: dict[str, Any] = {"auc": area_under_curve(points, max_cost)}
        for target in TARGETS:
            chosen = by_setting[policy.setting_for(target * tune_info["tune_best_quality"])]
            entry[f"at_chosen_setting_{round(target * 100)}"] = {
                "cost_reduction": 1.0 - chosen.cost / ref_cost, "quality_vs_best": chosen.quality / ref_quality,
                "setting": chosen.setting, "shares": chosen.shares}
            entry[f"curve_cost_reduction_{round(target * 100)}"] = _reduction(
                cost_at_quality(points, target * ref_quality), ref_cost)
        entry.update({k: v for k, v in policy.extra.items() if k != "model"})
        results[name] = entry
    singles = [routed_point(np.full(len(test), k), test.quality, test.cost, test.models, name)
               for k, name in enumerate(test.models)]
    curves["single_models"] = singles
    curves["oracle"] = oracle_points(np.nan_to_num(test.quality), test.cost, test.models, max_points=2000)
    for name in ("single_models", "oracle"):
        results[name] = {"auc": area_under_curve(curves[name], max_cost),
                         **{f"curve_cost_reduction_{round(t * 100)}":
                            _reduction(cost_at_quality(curves[name], t * ref_quality), ref_cost) for t in TARGETS}}
    router_model = policies[RECOMMENDED].extra["model"]
    return {
        "best_single_model": {"name": test.models[best], "quality": ref_quality, "cost_usd": ref_cost},
        "single_models": {p.setting: {"quality": p.quality, "cost_usd": p.cost} for p in singles},
        "policies": results,
        "calibration": calibration(router_model.predict_proba(X_test, test.tasks), test.quality, test.models),
        "curves": {name: [[p.quality, p.cost] for p in (pts if name == "single_models" else pareto_front(pts))]
                   for name, pts in curves.items()},
    }


# -- summaries -----------------------------------------------------------------------------------
def _mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    real = np.array([v for v in values if v is not None], dtype=float)
    return {"mean": float(real.mean()) if real.size else None, "sd": float(real.std()) if real.size else None,
            "n": int(real.size), "of": len(values)}


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in runs[0]["policies"]:
        entry = {"auc": _mean_sd([r["policies"][name]["auc"] for r in runs])}
        for t in TARGETS:
            pct = round(t * 100)
            entry[f"curve_cost_reduction_{pct}"] = _mean_sd([r["policies"][name][f"curve_cost_reduction_{pct}"]
                                                             for r in runs])
            if f"at_chosen_setting_{pct}" in runs[0]["policies"][name]:
                chosen = [r["policies"][name][f"at_chosen_setting_{pct}"] for r in runs]
                entry[f"chosen_cost_reduction_{pct}"] = _mean_sd([c["cost_reduction"] for c in chosen])
                entry[f"chosen_quality_vs_best_{pct}"] = _mean_sd([c["quality_vs_best"] for c in chosen])
        summary[name] = entry
    calib = runs[0]["calibration"]
    summary["_router_ece"] = {m: _mean_sd([r["calibration"][m]["ece"] for r in runs]) for m in calib}
    return summary


def _embed(encoder: Any, data: RouterDataset) -> np.ndarray:
    return embed_cached(encoder, data.inputs)


def run_source(folder: Path, split: str, seeds: Sequence[int], encoder: Any, settings: FitSettings,
               log: Any = print) -> dict[str, Any]:
    train = load_source(folder, ["train"])
    test = load_source(folder, [split], models=train.models)
    shared_texts = check_splits_disjoint(train, test)
    X_train, X_test = _embed(encoder, train), _embed(encoder, test)
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        runs.append(evaluate(train, X_train, test, X_test, seed, settings))
        log(f"  {source_name(folder)} seed {seed}: {time.perf_counter() - started:.0f} s")
    return {
        "source": source_name(folder), "split": split, "train_rows": len(train), "evaluated_rows": len(test),
        "prompt_texts_in_both_splits": shared_texts,
        "models_cheapest_first": train.models, "notes": train.notes,
        "summary": summarise_runs(runs), "runs": runs,
    }


def run_cross_source(folders: Sequence[Path], left_out: Path, split: str, seeds: Sequence[int], encoder: Any,
                     settings: FitSettings, log: Any = print) -> dict[str, Any] | None:
    """Train on the other sources, evaluate on ``left_out`` among the models they all share."""
    from routenlp_ray.routing.data import canonical_model

    held_train = load_source(left_out, ["train"])
    held = load_source(left_out, [split], models=held_train.models)
    held_models = {canonical_model(m) for m in held.models}
    # The models shared with the source that shares most; a model absent from a training row
    # cannot be learned from it, so only sources scoring all of them are trained on.
    others = [load_source(f, ["train"]) for f in folders if f != left_out]
    overlaps = [held_models & {canonical_model(m) for m in d.models} for d in others]
    shared = sorted(max(overlaps, key=len)) if overlaps else []
    if len(shared) < 2:
        return None
    others = [d for d, o in zip(others, overlaps) if set(shared) <= o]
    train = concat_sources(others, shared)
    test = concat_sources([held], shared)
    X_train, X_test = _embed(encoder, train), _embed(encoder, test)
    runs = []
    for seed in seeds:
        runs.append(evaluate(train, X_train, test, X_test, seed, settings))
        log(f"  cross-source -> {source_name(left_out)} seed {seed}")
    return {"left_out": source_name(left_out), "trained_on": [d.notes["source"] for d in others],
            "shared_models": test.models, "train_rows": len(train), "evaluated_rows": len(test),
            "summary": summarise_runs(runs), "runs": runs}


def decision_latency(policy: Any, texts: Sequence[str], tasks: Sequence[str], batch: int = 64,
                     warmup: int = 20) -> dict[str, float]:
    """Single-query latency (encode + router) and batched throughput of a start policy."""
    for text, task in zip(texts[:warmup], tasks[:warmup]):
        policy.decide_batch([text], [task])
    wall, cpu = [], []
    for text, task in zip(texts, tasks):
        started, started_cpu = time.perf_counter(), time.thread_time()
        policy.decide_batch([text], [task])
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    started, started_cpu = time.perf_counter(), time.thread_time()
    for i in range(0, len(texts), batch):
        policy.decide_batch(list(texts[i : i + batch]), list(tasks[i : i + batch]))
    elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
    # Wall time is what a caller waits on this shared machine; this thread's CPU time leaves out
    # the time other users' processes held the cores, so it shows what the decision itself costs.
    return {"queries": len(texts), "single_p50_ms": float(np.percentile(wall, 50)),
            "single_p99_ms": float(np.percentile(wall, 99)), "batched_decisions_per_s": len(texts) / elapsed,
            "single_cpu_p50_ms": float(np.percentile(cpu, 50)), "single_cpu_p99_ms": float(np.percentile(cpu, 99)),
            "batched_decisions_per_cpu_s": len(texts) / max(elapsed_cpu, 1e-9), "batch_size": batch,
            "load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count()}


# -- the whole benchmark -------------------------------------------------------------------------
def train_shipped_policy(folders: Sequence[Path], encoder: Any, settings: FitSettings, seed: int,
                         version: str) -> Any:
    """One router over every source's train rows (union of models, one trunk, task embedding per subtask)."""
    from routenlp_ray.routing.learned_policy import RouterStartPolicy

    train = concat_sources([load_source(f, ["train"]) for f in folders])
    router = fit_router(train, _embed(encoder, train), target=TARGETS[0], settings=settings, seed=seed)
    return RouterStartPolicy.from_utility_router(router, encoder=encoder, version=version)


def run_routing_benchmark(folders: Sequence[str | Path], split: str = "validation", seeds: Sequence[int] = range(5),
                          settings: FitSettings | None = None, encoder: Any = None, cross_source: bool = True,
                          latency_queries: int = 1000, artifact_out: str | Path | None = None,
                          compare_minilm: bool = False, log: Any = print) -> dict[str, Any]:
    import torch

    from routenlp_ray.models.static_encoder import StaticEncoder

    # Many tiny ops: on a shared 2-core CPU, a second intra-op thread only adds contention.
    torch.set_num_threads(1)
    settings = settings or FitSettings()
    encoder = encoder or StaticEncoder()
    paths = [Path(f) for f in folders]
    started = time.perf_counter()
    report: dict[str, Any] = {
        "split": split, "seeds": list(seeds), "encoder": {"kind": getattr(encoder, "kind", "?"),
                                                          "source": getattr(encoder, "model_source", "?")},
        "settings": settings.model_dump(), "targets": list(TARGETS), "sources": {}, "cross_source": {},
    }
    for folder in paths:
        log(f"source {source_name(folder)}")
        report["sources"][source_name(folder)] = run_source(folder, split, seeds, encoder, settings, log)
    if cross_source and len(paths) > 1:
        for folder in paths:
            row = run_cross_source(paths, folder, split, seeds, encoder, settings, log)
            if row is not None:
                report["cross_source"][source_name(folder)] = row
    policy = train_shipped_policy(paths, encoder, settings, seed=0, version="routing-v1")
    if artifact_out is not None:
        policy.save(artifact_out, metadata={"trained_on": [source_name(f) for f in paths], "split": "train"})
        report["artifact"] = str(artifact_out)
    texts, tasks = [], []
    for folder in paths:
        data = load_source(folder, [split], models=load_source(folder, ["train"]).models)
        texts += data.inputs
        tasks += data.tasks
    order = np.random.default_rng(0).permutation(len(texts))[:latency_queries]
    report["decision_latency"] = decision_latency(policy, [texts[i] for i in order], [tasks[i] for i in order])
    report["decision_latency"]["encoder"] = report["encoder"]["kind"]
    if compare_minilm:
        report["minilm_encode_reference"] = minilm_reference([texts[i] for i in order[:200]])
    report["wall_s"] = time.perf_counter() - started
    return report


def minilm_reference(texts: Sequence[str]) -> dict[str, float]:
    """What the int8 MiniLM encode alone costs on the same prompts (the path the static encoder replaces)."""
    from routenlp_ray.models.encoder import SentenceEncoder

    encoder = SentenceEncoder()
    for text in texts[:10]:
        encoder.encode_one(text)
    wall = []
    for text in texts:
        started = time.perf_counter()
        encoder.encode_one(text)
        wall.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    encoder.encode(list(texts), batch_size=32)
    return {"queries": len(texts), "single_p50_ms": float(np.percentile(wall, 50)),
            "single_p99_ms": float(np.percentile(wall, 99)),
            "batched_per_s": len(texts) / (time.perf_counter() - started), "load_average_1min": os.getloadavg()[0]}


# -- reports -------------------------------------------------------------------------------------
LABELS = {
    "router": "**router** (shared trunk + task embedding; head kind chosen on train)",
    "router_per_model_head": "router, per-model heads",
    "router_model_embedding_head": "router, model embedding",
    "knn": "kNN on the same embeddings (k chosen on train)",
    "routellm_mf": "RouteLLM matrix factorisation, N-way (win rate vs best)",
    "routellm_mf_pairwise": "RouteLLM matrix factorisation, pairwise (its own form)",
    "binary_winrate": "binary win-rate router (the project's earlier baseline)",
    "random": "random at matched cost",
    "single_models": "best single model (each model alone)",
    "oracle": "oracle",
}


def _fmt(stat: dict[str, Any] | None, pct: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "never reached"
    mean, sd = stat["mean"], stat["sd"]
    text = f"{mean:+.1%} ± {sd:.1%}" if pct else f"{mean:.3f} ± {sd:.3f}"
    return text + (f" ({stat['n']}/{stat['of']})" if stat["n"] < stat["of"] else "")


def summary_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| policy | AUC | cost red. @95% (curve) | @99% (curve) | cost red. @95% (setting chosen on train) "
             "| its quality / best | @99% chosen on train |", "|---|---|---|---|---|---|---|"]
    for name, label in LABELS.items():
        if name not in summary:
            continue
        s = summary[name]
        lines.append(
            f"| {label} | {_fmt(s['auc'])} | {_fmt(s['curve_cost_reduction_95'], True)} | "
            f"{_fmt(s['curve_cost_reduction_99'], True)} | {_fmt(s.get('chosen_cost_reduction_95'), True)} | "
            f"{_fmt(s.get('chosen_quality_vs_best_95'))} | {_fmt(s.get('chosen_cost_reduction_99'), True)} |")
    return lines


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    baselines = ["knn", "routellm_mf", "routellm_mf_pairwise", "binary_winrate", "random", "single_models"]
    best_auc = max(baselines, key=lambda b: summary[b]["auc"]["mean"])
    mf = summary["routellm_mf"]["curve_cost_reduction_95"]["mean"]
    mf_pair = summary["routellm_mf_pairwise"]["curve_cost_reduction_95"]["mean"]
    mf_best = max(x for x in (mf, mf_pair, 0.0) if x is not None)
    ours = summary[RECOMMENDED]["curve_cost_reduction_95"]["mean"]
    return {
        "router_auc": summary[RECOMMENDED]["auc"]["mean"], "best_baseline_auc": summary[best_auc]["auc"]["mean"],
        "best_baseline": best_auc,
        "router_auc_at_least_best_baseline": summary[RECOMMENDED]["auc"]["mean"] >= summary[best_auc]["auc"]["mean"],
        "router_cost_reduction_95": ours, "routellm_mf_cost_reduction_95": mf_best,
        "ratio_vs_routellm_mf": None if not mf_best or ours is None else ours / mf_best,
    }


def markdown_report(report: dict[str, Any], command: str) -> str:
    lines = [f"# Start-tier routing benchmark ({report['split']})", "", "```bash", command, "```", "",
             f"Encoder: `{report['encoder']['kind']}` ({report['encoder']['source']}). Seeds: {report['seeds']} "
             f"(mean ± sd over seeds; a seed re-draws the fit/tune slices of train and the initialisations). "
             "Every setting is chosen on the tune slice of train; the evaluated split is read once per seed. "
             "\"curve\" = the cheapest point of the evaluated curve reaching the quality (a property of the "
             "curve, like AUC); \"chosen on train\" = the operating point the tune slice picked, with its "
             "realised quality. Reference: the best single model on train, read on the evaluated split. "
             f"Wall time {report['wall_s'] / 60:.1f} min.", ""]
    for name, row in report["sources"].items():
        v = verdict(row["summary"])
        lines += [f"## {name}", "",
                  f"{row['train_rows']} train rows, {row['evaluated_rows']} {report['split']} rows; "
                  f"{len(row['models_cheapest_first'])} priced models scored on every row (cheapest first): "
                  f"{', '.join(row['models_cheapest_first'])}.", "",
                  f"Not routed, no price: {', '.join(row['notes']['models_without_price']) or 'none'}. "
                  f"Not routed, priced but not scored on every row: "
                  f"{', '.join(row['notes']['priced_models_not_scored_on_every_row']) or 'none'}. "
                  f"Prompt texts in both splits (same text, different id): {row['prompt_texts_in_both_splits']}.", "",
                  f"Best single model: {row['runs'][0]['best_single_model']['name']}.", "",
                  *summary_table(row["summary"]), "",
                  f"Router AUC {v['router_auc']:.3f} vs best baseline ({v['best_baseline']}) "
                  f"{v['best_baseline_auc']:.3f}; cost reduction at 95% (curve) "
                  f"{'n/a' if v['router_cost_reduction_95'] is None else format(v['router_cost_reduction_95'], '.1%')}"
                  f" vs RouteLLM-MF (better of its two forms) {v['routellm_mf_cost_reduction_95']:.1%}"
                  + ("" if v["ratio_vs_routellm_mf"] is None else f" = {v['ratio_vs_routellm_mf']:.2f}x") + ".", "",
                  "Router heads chosen per seed: "
                  + ", ".join(r["policies"][RECOMMENDED]["head"] for r in row["runs"]) + ".", "",
                  "ECE of the router's success probabilities per model (10 bins, mean ± sd over seeds): "
                  + ", ".join(f"{m} {_fmt(s)}" for m, s in row["summary"]["_router_ece"].items()) + ".", ""]
    if report["cross_source"]:
        lines += ["## Cross-source (train on the other sources, evaluate on the one left out)", ""]
        for name, row in report["cross_source"].items():
            lines += [f"### {name} left out (trained on {', '.join(row['trained_on'])}; shared models: "
                      f"{', '.join(row['shared_models'])}; {row['train_rows']} train rows)", "",
                      *summary_table(row["summary"]), ""]
    lat = report["decision_latency"]
    lines += ["## Decision speed", "",
              f"Shipped artifact (`{report.get('artifact', 'not saved')}`), encoder `{lat['encoder']}`, one torch "
              f"thread, {lat['queries']} {report['split']} prompts of all sources: p50 {lat['single_p50_ms']:.2f} ms, "
              f"p99 {lat['single_p99_ms']:.2f} ms per query; {lat['batched_decisions_per_s']:.0f} decisions/s "
              f"in batches of {lat['batch_size']} (wall clock, load average {lat['load_average_1min']:.1f} on "
              f"{lat['cpus']} CPUs). CPU time of the deciding thread: p50 {lat['single_cpu_p50_ms']:.2f} ms, p99 "
              f"{lat['single_cpu_p99_ms']:.2f} ms, {lat['batched_decisions_per_cpu_s']:.0f} decisions per CPU-second "
              "batched.", ""]
    ref = report.get("minilm_encode_reference")
    if ref:
        lines += [f"For reference, the int8 MiniLM encode alone (the path the static encoder replaces) on "
                  f"{ref['queries']} of the same prompts: p50 {ref['single_p50_ms']:.2f} ms, p99 "
                  f"{ref['single_p99_ms']:.2f} ms, {ref['batched_per_s']:.0f}/s in batches of 32 "
                  f"(load average {ref['load_average_1min']:.1f}).", ""]
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Each source's quality-cost curves of the first seed (the report's ``.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, r) for n, r in report["sources"].items()] + [(f"{n} (cross-source)", r)
                                                            for n, r in report["cross_source"].items()]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 4.5), squeeze=False)
    styles = {"router": ("C3", "-"), "knn": ("C2", "--"), "routellm_mf": ("C0", "-."),
              "routellm_mf_pairwise": ("C0", ":"), "binary_winrate": ("C4", ":"), "random": ("0.5", "--"),
              "oracle": ("k", ":")}
    for ax, (name, row) in zip(axes[0], rows):
        curves = row["runs"][0]["curves"]
        for policy, (color, style) in styles.items():
            pts = sorted(curves[policy], key=lambda p: p[1])
            front, best = [], -1.0
            for q, c in pts:
                if q > best:
                    front.append((c, q))
                    best = q
            ax.step([c for c, _ in front], [q for _, q in front], where="post", color=color, linestyle=style,
                    label=policy)
        singles = np.array([[c, q] for q, c in curves["single_models"]])
        ax.scatter(singles[:, 0], singles[:, 1], s=12, color="0.3", label="single models", zorder=3)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("USD per query (log)")
        ax.set_ylabel("quality")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"quality-cost curves on {report['split']} (seed {report['seeds'][0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(report: dict[str, Any], path: Path) -> None:
    """Each source's router reliability per model, first seed (the report's ``_reliability.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(report["sources"].items())
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4.5), squeeze=False)
    for ax, (name, row) in zip(axes[0], sources):
        for model, entry in row["runs"][0]["calibration"].items():
            pts = np.array(entry["reliability"])
            if len(pts):
                ax.plot(pts[:, 0], pts[:, 1], marker=".", linewidth=0.8, alpha=0.7)
        ax.plot([0, 1], [0, 1], "k:", linewidth=1)
        ax.set_title(f"{name}: router reliability per model")
        ax.set_xlabel("predicted success")
        ax.set_ylabel("observed quality")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def write_routing_report(report: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write ``out`` (JSON), its ``.md``, ``.png`` (curves) and ``_reliability.png``; returns the JSON as written."""
    # Four significant digits and no indentation: the per-seed curves are most of the file.
    return write_report(out, _rounded(report), indent=None,
                        markdown=lambda written: markdown_report(report, written["command"]),
                        figures={".png": plot_curves, "_reliability.png": plot_reliability})


def run_latency_benchmark(artifact: str | Path, folders: Sequence[str | Path], split: str = "validation",
                          queries: int = 1000, repeats: int = 3, compare_minilm: bool = True) -> dict[str, Any]:
    """Decision latency of a saved router artifact, loaded the way the serving path loads it.

    The machine is shared, so the measurement is repeated and every repeat is kept with the
    load average it ran under; the MiniLM encode is timed in the same process right after.
    """
    import torch

    from routenlp_ray.routing.learned_policy import load_router_policy

    torch.set_num_threads(1)
    policy = load_router_policy(str(artifact))
    texts, tasks = [], []
    for folder in folders:
        data = load_source(folder, [split], models=load_source(folder, ["train"]).models)
        texts += data.inputs
        tasks += data.tasks
    order = np.random.default_rng(0).permutation(len(texts))[:queries]
    texts, tasks = [texts[i] for i in order], [tasks[i] for i in order]
    runs = [decision_latency(policy, texts, tasks) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["single_p50_ms"])
    report: dict[str, Any] = {"artifact": str(artifact), "encoder": policy.encoder_kind, "split": split,
                              "repeats": runs, "least_loaded_repeat": best,
                              "targets": {"single_p50_ms": 5.0, "single_p99_ms": 15.0, "batched_decisions_per_s": 1000}}
    if compare_minilm:
        report["minilm_encode_reference"] = minilm_reference(texts[:200])
    return report


def latency_markdown(report: dict[str, Any], command: str) -> str:
    lines = ["# Router decision speed", "", "```bash", command, "```", "",
             f"Artifact `{report['artifact']}` loaded through the serving path (`load_router_policy`), encoder "
             f"`{report['encoder']}`, one torch thread, {report['split']} prompts of every source. Wall clock on a "
             "shared 2-core machine, so each repeat is shown with its load average; CPU time is the deciding "
             "thread's own.", "",
             "| repeat | load avg | p50 ms | p99 ms | decisions/s (batch 64) | CPU p50 ms | CPU p99 ms | "
             "decisions per CPU-s |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(report["repeats"]):
        lines.append(f"| {i} | {r['load_average_1min']:.1f} | {r['single_p50_ms']:.2f} | {r['single_p99_ms']:.2f} | "
                     f"{r['batched_decisions_per_s']:.0f} | {r['single_cpu_p50_ms']:.2f} | "
                     f"{r['single_cpu_p99_ms']:.2f} | {r['batched_decisions_per_cpu_s']:.0f} |")
    ref = report.get("minilm_encode_reference")
    if ref:
        lines += ["", f"int8 MiniLM encode alone (the old path), {ref['queries']} of the same prompts, right after: "
                  f"p50 {ref['single_p50_ms']:.2f} ms, p99 {ref['single_p99_ms']:.2f} ms, {ref['batched_per_s']:.0f}/s "
                  f"in batches of 32 (load average {ref['load_average_1min']:.1f})."]
    return "\n".join(lines) + "\n"
