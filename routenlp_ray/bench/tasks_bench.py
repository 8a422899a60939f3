"""The six-task benchmark on recorded tier outputs: every routing policy, same records.

Policies compared, each swept over its own knob to give a quality–cost curve:
- ``frontier_only`` and ``cheapest_only`` (single points);
- ``random``: the cheapest tier or the frontier at random, at matched cost;
- ``routellm_binary``: a RouteLLM-style logistic classifier of "the cheap tier is good
  enough", thresholded;
- ``cascade``: start at the cheapest tier, accept when the mean token NLL is <= delta;
- ``router``: the difficulty-aware router's start tier, no cascade;
- ``router_cascade``: the router's start tier, then the cascade;
- ``oracle``: per query, the tier an all-knowing router would pick at each price of quality.

For every task the reported operating point is the cheapest one that keeps the task's
quality target (96% of frontier quality by default); the aggregate is volume-weighted.
The router is trained on one half of the examples (by a hash of the id) and all policies
are read on the other half.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.bench.curves import (
    OperatingPoint,
    area_under_curve,
    best_point_at_quality,
    oracle_points,
    routed_point,
)
from routenlp_ray.bench.report import write_report
from routenlp_ray.cascade import accepts
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.recording.coverage import calibrate_table, cascade_outcome
from routenlp_ray.recording.tables import TaskTable, build_table, in_held_out_half
from routenlp_ray.routing.learned_policy import start_indices
from routenlp_ray.routing.router import DifficultyRouter
from routenlp_ray.routing.training import train_router

GRID = np.round(np.linspace(0.02, 0.98, 49), 3)


# -- policies ------------------------------------------------------------------------------
def cascade_choice(table: TaskTable, start: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Which tier answers, and what all tried tiers cost, for a cascade from ``start`` with threshold delta."""
    n, k = table.quality.shape
    answer = np.full(n, k - 1)
    spent = np.zeros(n)
    for i in range(n):
        for tier in range(int(start[i]), k):
            spent[i] += table.cost[i, tier]
            if accepts(float(table.uncertainty[i, tier]), delta, is_last=tier == k - 1):
                answer[i] = tier
                break
    return answer, spent


def cascade_point(table: TaskTable, start: np.ndarray, delta: float, setting: str) -> OperatingPoint:
    answer, spent = cascade_choice(table, start, delta)
    point = routed_point(answer, table.quality, table.cost, table.tiers, setting)
    point.cost = float(spent.mean())
    return point


def deltas(table: TaskTable) -> list[float]:
    finite = table.uncertainty[:, :-1][np.isfinite(table.uncertainty[:, :-1])]
    if finite.size == 0:
        return [float("-inf")]
    return [float("-inf"), *np.quantile(finite, np.linspace(0, 1, 21)).tolist()]


def policy_curves(
    table: TaskTable, router_proba: np.ndarray, binary_proba: np.ndarray, seed: int
) -> dict[str, list[OperatingPoint]]:
    n, k = table.quality.shape
    low = table.cheapest_served
    cheapest, frontier = np.full(n, low), np.full(n, k - 1)
    draws = np.random.default_rng(seed).random(n)
    curves: dict[str, list[OperatingPoint]] = {
        "frontier_only": [routed_point(frontier, table.quality, table.cost, table.tiers, "frontier")],
        "cheapest_only": [routed_point(cheapest, table.quality, table.cost, table.tiers, "cheapest")],
        "random": [routed_point(np.where(draws < p, k - 1, low), table.quality, table.cost, table.tiers, float(p))
                   for p in GRID],
        "routellm_binary": [routed_point(np.where(binary_proba >= t, low, k - 1), table.quality, table.cost,
                                         table.tiers, float(t)) for t in GRID],
        "cascade": [cascade_point(table, cheapest, d, f"delta={d:.4g}") for d in deltas(table)],
        "router": [routed_point(start_indices(router_proba, [t] * n), table.quality, table.cost, table.tiers, float(t))
                   for t in GRID],
        "router_cascade": [cascade_point(table, start_indices(router_proba, [t] * n), d, f"target={t},delta={d:.4g}")
                           for t in GRID[::4] for d in deltas(table)],
        # A tier that does not serve the task is no option, not a free answer of quality 0.
        "oracle": oracle_points(np.where(table.served, table.quality, np.nan), table.cost, table.tiers),
    }
    return curves


def calibrated_cascades(
    train: TaskTable, test: TaskTable, alpha: float, epsilon: float, delta: float, quality_budget: float
) -> dict[str, dict[str, Any]]:
    """The cascade as served: thresholds calibrated per tier on the training half, read once on the other.

    Three rules: the paper's split-conformal coverage rule at ``alpha``; Learn-then-Test risk
    control (accepted-error rate <= ``epsilon`` with probability 1 - ``delta``); and quality
    control (the share of queries a cheap tier answers wrong <= ``quality_budget``, the task's
    1 - quality_target, with probability 1 - ``delta``). Nothing here is chosen on the evaluation
    half, unlike the best point of a swept curve.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, thresholds in (
        ("cascade_coverage", calibrate_table(train, alpha, "coverage")),
        ("cascade_risk", calibrate_table(train, epsilon, "risk", delta=delta)),
        ("cascade_quality", calibrate_table(train, quality_budget, "quality", delta=delta)),
    ):
        answered, paid, got = cascade_outcome(test, thresholds)
        point = routed_point(answered, test.quality, test.cost, test.tiers, name)
        point.cost = float(paid.mean())
        accepted_error = {}
        for tier in range(len(test.tiers) - 1):
            taken = answered == tier
            if taken.any():
                accepted_error[test.tiers[tier]] = {
                    "accepted": int(taken.sum()),
                    "error_rate": float(1 - test.correct[taken, tier].mean()),
                }
        out[name] = {
            "point": point,
            "thresholds": dict(zip(test.tiers[:-1], thresholds[:-1])),
            "accepted_error": accepted_error,
        }
    return out


def calibrated_spread(
    table: TaskTable,
    alpha: float,
    epsilon: float,
    delta: float,
    quality_budget: float,
    repeats: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean ± sd over ``repeats`` random half splits of the calibrated cascades' retention and cost reduction.

    The headline split is one draw; this shows how much the numbers move with the draw.
    """
    rng = np.random.default_rng(seed)
    runs: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeats):
        order = rng.permutation(len(table.ids))
        half = len(order) // 2
        calib, test = table.rows(order[:half]), table.rows(order[half:])
        for name, result in calibrated_cascades(calib, test, alpha, epsilon, delta, quality_budget).items():
            point = result["point"]
            frontier_quality, frontier_cost = test.quality[:, -1].mean(), test.cost[:, -1].mean()
            run = runs.setdefault(name, {"retention": [], "cost_reduction": []})
            run["retention"].append(point.quality / frontier_quality if frontier_quality else float("nan"))
            run["cost_reduction"].append(1 - point.cost / frontier_cost if frontier_cost else float("nan"))
    return {
        name: {f"{key}_{stat}": float(getattr(np, stat)(values)) for key, values in run.items() for stat in ("mean", "std")}
        | {"repeats": repeats}
        for name, run in runs.items()
    }


def point_summary(point: OperatingPoint, frontier: OperatingPoint, target: float) -> dict[str, Any]:
    """One fixed operating point against the frontier: does it keep ``target`` of frontier quality?"""
    retention = point.quality / frontier.quality if frontier.quality else None
    return {
        "meets_target": retention is not None and retention >= target - 1e-12,
        "quality": point.quality,
        "retention": retention,
        "cost_usd": point.cost,
        "cost_reduction": 1 - point.cost / frontier.cost if frontier.cost else None,
        "shares": point.shares,
        "setting": point.setting,
    }


def operating_point(points: Sequence[OperatingPoint], frontier: OperatingPoint, target: float) -> dict[str, Any]:
    """The cheapest point keeping ``target`` of frontier quality (None if no point does)."""
    point = best_point_at_quality(points, target * frontier.quality)
    if point is None:
        return {"meets_target": False}
    return {
        "meets_target": True,
        "quality": point.quality,
        "retention": point.quality / frontier.quality if frontier.quality else None,
        "cost_usd": point.cost,
        "cost_reduction": 1 - point.cost / frontier.cost if frontier.cost else None,
        "shares": point.shares,
        "setting": point.setting,
    }


# -- the benchmark -------------------------------------------------------------------------
def decision_latency(policy_router: DifficultyRouter, encoder: Any, texts: Sequence[str], task: str) -> dict[str, float]:
    """Encode + heads + start-tier choice, one query at a time and batched."""
    single = []
    for text in list(texts)[:200]:
        started = time.perf_counter()
        proba = policy_router.predict_proba(encoder.encode_one(text), [task])
        start_indices(proba, [0.5])
        single.append((time.perf_counter() - started) * 1000)
    batch = (list(texts) * (1 + 1024 // max(len(texts), 1)))[:1024]
    throughput: dict[str, float] = {}
    for label, size in (("exact", None), ("batched_32", 32)):
        started = time.perf_counter()
        proba = policy_router.predict_proba(encoder.encode(batch, batch_size=size), [task] * len(batch))
        start_indices(proba, [0.5] * len(batch))
        throughput[label] = len(batch) / (time.perf_counter() - started)
    return {
        "single_p50_ms": float(np.percentile(single, 50)),
        "single_p99_ms": float(np.percentile(single, 99)),
        "batched_decisions_per_s": throughput["batched_32"],
        "one_at_a_time_decisions_per_s": throughput["exact"],
        "single_n": len(single),
        "batch_n": len(batch),
        "note": "batched_32 embeds 32 length-sorted queries per call; with the int8 encoder those embeddings "
        "differ slightly from single-query ones (per-batch activation scale).",
    }


def run_tasks_benchmark(
    config: RouteNLPConfig,
    records_dir: str | Path,
    data_dir: str | Path,
    tasks: Sequence[str],
    split: str = "validation",
    seed: int = 0,
    epochs: int = 150,
    encoder: Any = None,
    risk_epsilon: float = 0.05,
    risk_delta: float = 0.1,
    served_rule: str = "cascade_quality",
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from routenlp_ray.conformal.selection import TaskScores
    from routenlp_ray.models.encoder import SentenceEncoder

    scores = TaskScores(config.cascade)  # each task's uncertainty score, as the service computes it
    tables = {t: build_table(config, Path(records_dir), Path(data_dir), t, split, scores.for_task(t)) for t in tasks}
    encoder = encoder or SentenceEncoder()
    tiers = tables[tasks[0]].tiers
    train = {t: tab.rows(~np.array([in_held_out_half(i) for i in tab.ids])) for t, tab in tables.items()}
    test = {t: tab.rows(np.array([in_held_out_half(i) for i in tab.ids])) for t, tab in tables.items()}
    X_train = {t: encoder.encode(tab.inputs) for t, tab in train.items()}
    X_test = {t: encoder.encode(tab.inputs) for t, tab in test.items()}
    router = train_router(list(train.values()), X_train, tiers, seed, epochs)

    # RouteLLM-style: one binary "the cheapest tier serving the task is good enough" classifier.
    cheap_ok = np.concatenate(
        [tab.correct[:, tab.cheapest_served] >= tab.correct[:, -1] for tab in train.values()]
    ).astype(int)
    binary = None
    if 0 < cheap_ok.sum() < len(cheap_ok):
        binary = LogisticRegression(C=1.0, max_iter=2000).fit(np.concatenate(list(X_train.values())), cheap_ok)

    per_task: dict[str, Any] = {}
    curves_out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, tab in test.items():
        target = config.task(task).quality_target
        proba = router.predict_proba(X_test[task], [task] * len(tab.ids))
        binary_proba = binary.predict_proba(X_test[task])[:, 1] if binary is not None else np.zeros(len(tab.ids))
        curves = policy_curves(tab, proba, binary_proba, seed)
        frontier = curves["frontier_only"][0]
        budget = 1 - target
        calibrated = calibrated_cascades(train[task], tab, config.cascade.alpha, risk_epsilon, risk_delta, budget)
        max_cost = max(p.cost for points in curves.values() for p in points)
        per_task[task] = {
            "examples": {"train": len(train[task].ids), "held_out": len(tab.ids)},
            "quality_target": target,
            "frontier": frontier.to_dict(),
            "tier_quality": dict(zip(tiers, tab.quality.mean(axis=0).tolist())),
            "tier_accuracy": dict(zip(tiers, tab.correct.mean(axis=0).tolist())),
            "policies": {
                name: {**operating_point(points, frontier, target), "auc": area_under_curve(points, max_cost)}
                for name, points in curves.items()
            },
            "calibrated": {
                name: {**point_summary(result["point"], frontier, target), **{k: v for k, v in result.items() if k != "point"}}
                for name, result in calibrated.items()
            },
            "calibrated_spread": calibrated_spread(tables[task], config.cascade.alpha, risk_epsilon, risk_delta,
                                                   budget, seed=seed),
        }
        curves_out[task] = {name: [p.to_dict() for p in points] for name, points in curves.items()}

    some_task = tasks[0]
    return {
        "benchmark": "tasks",
        "tiers_cheapest_first": tiers,
        "split": split,
        "per_task": per_task,
        "aggregate": aggregate(per_task, {t: len(test[t].ids) for t in tasks}),
        "aggregate_calibrated": aggregate(per_task, {t: len(test[t].ids) for t in tasks}, key="calibrated"),
        "risk_rule": {"epsilon": risk_epsilon, "delta": risk_delta},
        "quality_rule": {"budget": "1 - quality_target per task", "delta": risk_delta},
        "served_rule": served_rule,
        "coverage_rule": {"alpha": config.cascade.alpha},
        "router_decision_latency": decision_latency(router, encoder, test[some_task].inputs, some_task),
        "curves": curves_out,
    }


def aggregate(per_task: dict[str, Any], volumes: dict[str, int], key: str = "policies") -> dict[str, Any]:
    """Volume-weighted quality retention and cost reduction of each policy over tasks.

    For swept policies (``key="policies"``) a task where the policy cannot reach its target
    counts at frontier cost and quality, which is what a deployment would fall back to. Fixed,
    calibrated policies (``key="calibrated"``) count at what they measured, target met or not.
    """
    policies = next(iter(per_task.values()))[key].keys()
    total = sum(volumes.values())
    out: dict[str, Any] = {}
    for name in policies:
        spent = frontier_spent = retention = 0.0
        for task, result in per_task.items():
            weight = volumes[task] / total
            point, frontier = result[key][name], result["frontier"]
            if point.get("meets_target") or key == "calibrated":
                spent += weight * point["cost_usd"]
                retention += weight * (point["retention"] or 0.0)
            else:
                spent += weight * frontier["cost"]
                retention += weight
            frontier_spent += weight * frontier["cost"]
        out[name] = {"retention": retention, "cost_reduction": 1 - spent / frontier_spent if frontier_spent else None}
    return out


STRUCTURED_TASKS = ("fin_ner", "cs_intent", "legal_clause", "legal_risk")
GENERATION_TASKS = ("cs_response", "fin_summarization")


def tasks_markdown(report: dict[str, Any]) -> str:
    tiers = report["tiers_cheapest_first"]
    lines = ["# Six-task routing benchmark", "", f"Tiers, cheapest first: {', '.join(tiers)}. Split: {report['split']}.",
             "Routers, thresholds and classifiers are fitted on one half of the records (by a hash of the id) and every",
             "policy is read once on the other half.", ""]
    if "calibrated" in next(iter(report["per_task"].values())):
        risk, coverage = report["risk_rule"], report["coverage_rule"]
        lines += [
            "## The cascade as served: per-tier thresholds calibrated on the training half",
            "",
            f"`cascade_quality`: the quality a task loses to accepted cheap answers (the share answered wrong; with a graded "
            f"metric, the score given up) <= 1 - quality_target of the task, "
            f"with probability {1 - risk['delta']:.2f}. "
            f"`cascade_risk`: Learn-then-Test, accepted-error rate <= {risk['epsilon']} with probability "
            f"{1 - risk['delta']:.2f}. `cascade_coverage`: the paper's split-conformal rule, alpha = {coverage['alpha']}.",
            "Nothing here is chosen on the evaluation half.",
            "",
            "| task | policy | quality (frontier) | retention | cost reduction | share per tier | accepted-error rate per cheap tier |",
            "|---|---|---|---|---|---|---|",
        ]
        for task, result in report["per_task"].items():
            frontier_quality = result["frontier"]["quality"]
            for name, point in result["calibrated"].items():
                shares = ", ".join(f"{k} {v:.0%}" for k, v in point["shares"].items())
                errors = ", ".join(
                    f"{tier} {e['error_rate']:.1%} of {e['accepted']}" for tier, e in point["accepted_error"].items()
                ) or "none accepted"
                lines.append(
                    f"| {task} | {name} | {point['quality']:.3f} ({frontier_quality:.3f}) | {point['retention']:.1%} "
                    f"| {point['cost_reduction']:.1%} | {shares} | {errors} |"
                )
        lines += ["", "Over 10 random half splits of each task's records (mean ± sd):", "",
                  "| task | policy | retention | cost reduction |", "|---|---|---|---|"]
        for task, result in report["per_task"].items():
            for name, spread in result.get("calibrated_spread", {}).items():
                lines.append(
                    f"| {task} | {name} | {spread['retention_mean']:.1%} ± {spread['retention_std']:.1%} "
                    f"| {spread['cost_reduction_mean']:.1%} ± {spread['cost_reduction_std']:.1%} |"
                )
        lines += ["", "| policy | volume-weighted retention | cost reduction (USD, all tasks) |", "|---|---|---|"]
        for name, agg in report["aggregate_calibrated"].items():
            lines.append(f"| {name} | {agg['retention']:.1%} | {agg['cost_reduction']:.1%} |")
        if "targets" in report:
            lines += ["", f"### Targets (issue: specialist tiers), read on `{report['served_rule']}` (what the embedded "
                      "default serves)", ""]
            lines += ["| target | measured | met |", "|---|---|---|"]
            lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
        lines += [
            "",
            "The replay frontier answers with the reference, so its generation quality (cs_response, "
            "fin_summarization) is a ceiling that no real frontier reaches: retention there is against a perfect "
            "answer, and the absolute metric is shown next to it.",
            "",
        ]
    lines += ["## Swept policies: the cheapest point of each curve that keeps the quality target",
              "",
              "Each curve is swept over its knob and the reported point is chosen on the evaluation half itself, so these",
              "rows are in-sample upper bounds for the policy, not what a deployment gets.", ""]
    lines += ["| task | policy | meets target | retention | cost reduction | share per tier |", "|---|---|---|---|---|---|"]
    for task, result in report["per_task"].items():
        for name, point in result["policies"].items():
            if point.get("meets_target"):
                shares = ", ".join(f"{k} {v:.0%}" for k, v in point["shares"].items())
                lines.append(f"| {task} | {name} | yes | {point['retention']:.1%} | {point['cost_reduction']:.1%} | {shares} |")
            else:
                lines.append(f"| {task} | {name} | no | | | |")
    lines += ["", "### Volume-weighted aggregate (swept, in-sample)", "", "| policy | retention | cost reduction |",
              "|---|---|---|"]
    for name, agg in report["aggregate"].items():
        lines.append(f"| {name} | {agg['retention']:.1%} | {agg['cost_reduction']:.1%} |")
    latency = report["router_decision_latency"]
    lines += ["", f"Router decision latency: p50 {latency['single_p50_ms']:.2f} ms, p99 {latency['single_p99_ms']:.2f} ms "
              f"per query; {latency['batched_decisions_per_s']:.0f} decisions/s batched.", ""]
    return "\n".join(lines)


def issue_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The specialist issue's targets, read on the rule the embedded default serves."""
    per_task = report["per_task"]
    rule = report["served_rule"]
    out: list[dict[str, Any]] = []
    structured = [t for t in STRUCTURED_TASKS if t in per_task]
    if structured:
        volumes = {t: per_task[t]["examples"]["held_out"] for t in structured}
        agg = aggregate({t: per_task[t] for t in structured}, volumes, key="calibrated")[rule]
        out.append({
            "target": "structured tasks together: cost -60% at >= 97% retention",
            "measured": f"{agg['cost_reduction']:.1%} at {agg['retention']:.1%}",
            "met": agg["cost_reduction"] >= 0.60 and agg["retention"] >= 0.97,
        })
    for task, bar_cost in [(t, 0.40) for t in structured] + [("cs_response", 0.30)]:
        if task not in per_task:
            continue
        point = per_task[task]["calibrated"][rule]
        out.append({
            "target": f"{task}: cost -{bar_cost:.0%} at >= 96% retention",
            "measured": f"{point['cost_reduction']:.1%} at {point['retention']:.1%}",
            "met": point["cost_reduction"] >= bar_cost and point["retention"] >= 0.96,
        })
    return out


def plot_pareto(curves: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(curves)
    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for name, points in curves[task].items():
            xs = [p["cost"] * 1e6 for p in points]
            ys = [p["quality"] for p in points]
            style = "o" if len(points) == 1 else ".-"
            ax.plot(xs, ys, style, label=name, markersize=4, linewidth=1)
        ax.set_title(task)
        ax.set_xlabel("USD per 1M queries")
        ax.set_ylabel("quality")
        ax.set_xscale("symlog")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tasks_report(report: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write ``out`` (JSON, with the issue's targets when thresholds were calibrated), its ``.md`` and Pareto ``.png``."""
    if "calibrated" in next(iter(report["per_task"].values())):
        report = {**report, "targets": issue_targets(report)}
    return write_report(out, report, markdown=tasks_markdown,
                        figures={".png": lambda written, path: plot_pareto(written["curves"], path)})
