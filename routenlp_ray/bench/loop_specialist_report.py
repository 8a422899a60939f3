"""The report of ``routenlp bench loop-specialist``: JSON, Markdown and the budget-curve PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from routenlp_ray.bench.ratio_ci import ratio_ci_text, ratio_is_informative
from routenlp_ray.bench.report import write_report

__all__ = ["write_loop_specialist_report"]


def _pp(stat: Mapping[str, float]) -> str:
    return f"{100 * stat['mean']:+.2f} ± {100 * stat['sd']:.2f} pp"


def _pct(stat: Mapping[str, float]) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['sd']:.1f}%"


def write_loop_specialist_report(report: dict[str, Any], out: str | Path, command: str | None = None) -> Path:
    """Write ``out`` (JSON), its ``.md`` and the budget curve ``.png``; returns the Markdown path."""
    figure = Path(out).with_suffix(".png")
    write_report(out, report, command=command, markdown=lambda written: _markdown(written, figure.name),
                 figures={".png": lambda written, path: _plot_curve(written["budget_curve"], path)})
    return Path(out).with_suffix(".md")


def _plot_curve(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [100 * c["covered_cost_share"]["mean"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("targeted_gain", "targeted"), ("untargeted_gain", "untargeted (same size)")):
        ax.errorbar(x, [100 * c[key]["mean"] for c in curve], yerr=[100 * c[key]["sd"] for c in curve],
                    marker="o", capsize=3, label=label)
    for xi, c in zip(x, curve):
        ax.annotate(f"n={c['examples']['mean']:.0f}", (xi, 100 * c["targeted_gain"]["mean"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("failure cost covered by the targeted clusters (%)")
    ax.set_ylabel("cost reduction over base (pp, validation)")
    ax.set_title("Specialist loop: budget curve (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ratio_caveat(point: Mapping[str, Any]) -> list[str]:
    """A ratio is only meaningful when the untargeted gain is surely positive; say so when it is not."""
    if ratio_is_informative(point):
        return []
    return ["- The ratio's CI reaches 0 or below, or is unbounded above: the untargeted gain is not "
            "distinguishable from 0, so the ratio's point value carries no information; read the difference instead."]


def _ratio_ci(point: Mapping[str, Any], missing: str = "n/a") -> str:
    """The ratio's CI; a report made before the all-draws rule dropped only the draws where u == 0."""
    def older(r: Mapping[str, Any]) -> str:
        ci = r["ratio_ci95"]
        return missing if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"

    return ratio_ci_text(point, older)


def _markdown(report: dict[str, Any], png: str) -> str:
    s = report["settings"]
    curve = report["budget_curve"]
    head = next(c for c in curve if c["fraction"] == report["headline_fraction"])
    tasks = s["tasks"]
    ratio = "n/a (untargeted gained nothing)" if head["ratio"] is None else f"{head['ratio']:.2f}×"
    lines = [
        "# The loop at real scale: targeted vs untargeted distillation into the specialist tier",
        "",
        f"Command: `{report['command']}` ({report['seconds'] / 60:.1f} min on the shared 2-core CPU).",
        "",
        "Offline, without Ray Serve: each query's cascade decision (the specialist's answer, accepted when its "
        "uncertainty is within the quality-rule threshold, else the frontier) is computed directly, which is "
        "what the served cascade does. The frontier's answers are the data's references (the replay frontier). "
        "The cascade is specialist → frontier; the SmolLM2 middle tier and its LoRA student are not part of "
        "this run.",
        "",
        f"## Headline (budget = top clusters covering {100 * head['fraction']:.0f}% of failure cost)",
        "",
        f"- Targeted/untargeted ratio of cost improvement over base: **{ratio}**, bootstrap 95% CI "
        f"{_ratio_ci(head)} (seeds × queries, {head['reps']} reps); "
        f"difference targeted − untargeted: 95% CI [{100 * head['difference_ci95'][0]:+.2f}, "
        f"{100 * head['difference_ci95'][1]:+.2f}] pp.",
        *_ratio_caveat(head),
        f"- Cost-reduction improvement over base, mean ± sd over {len(s['seeds'])} seeds: targeted "
        f"{_pp(head['targeted_gain'])}, untargeted {_pp(head['untargeted_gain'])} "
        f"(budget {head['examples']['mean']:.0f} ± {head['examples']['sd']:.0f} examples, "
        f"{head['clusters']['mean']:.1f} of {s['n_clusters']} clusters, covering "
        f"{_pct(head['covered_cost_share'])} of failure cost).",
        f"- Quality retention: base {_pct(report['students']['base']['quality_retention'])}, targeted "
        f"{_pct(head['targeted_quality_retention'])}, untargeted {_pct(head['untargeted_quality_retention'])}.",
        "",
        "## Budget curve",
        "",
        f"![budget curve]({png})",
        "",
        "| clusters' cost share f | clusters | covered | examples | targeted gain | untargeted gain | ratio "
        "| ratio 95% CI | t − u 95% CI (pp) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in curve:
        r = "–" if c["ratio"] is None else f"{c['ratio']:.2f}×"
        cci = _ratio_ci(c, missing="–")
        lines.append(
            f"| {c['fraction']:g} | {c['clusters']['mean']:.1f} | {_pct(c['covered_cost_share'])} "
            f"| {c['examples']['mean']:.0f} ± {c['examples']['sd']:.0f} | {_pp(c['targeted_gain'])} "
            f"| {_pp(c['untargeted_gain'])} | {r} | {cci} "
            f"| [{100 * c['difference_ci95'][0]:+.2f}, {100 * c['difference_ci95'][1]:+.2f}] |")
    lines += ["", "Per-seed gains (pp), targeted / untargeted:", ""]
    for c in curve:
        t = ", ".join(f"{100 * v:+.2f}" for v in c["targeted_gain_per_seed"])
        u = ", ".join(f"{100 * v:+.2f}" for v in c["untargeted_gain_per_seed"])
        lines.append(f"- f={c['fraction']:g}: targeted [{t}]; untargeted [{u}]")
    lines += ["", f"## Per task (f = {head['fraction']:g})", "",
              "| task | base cost reduction | base specialist share | targeted examples | targeted gain "
              "| untargeted gain | base quality retention |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for task in tasks:
        base = report["students"]["base"]["per_task"][task]
        pt = head["per_task"][task]
        lines.append(f"| {task} | {_pct(base['cost_reduction'])} | {_pct(base['specialist_share'])} "
                     f"| {pt['targeted_examples']['mean']:.0f} | {_pp(pt['targeted_gain'])} "
                     f"| {_pp(pt['untargeted_gain'])} | {_pct(base['quality_retention'])} |")
    t_name, u_name = f"targeted@{head['fraction']:g}", f"untargeted@{head['fraction']:g}"
    inside = head["saved_usd_over_base_in_selected_clusters"]
    outside = head["saved_usd_over_base_outside_selected_clusters"]
    lines += [
        "", f"## Per cluster (f = {head['fraction']:g})", "",
        "Extra USD saved over base on the evaluation half, by the failure cluster each evaluation query is "
        "nearest to (mean ± sd over seeds):", "",
        "| student | in the selected clusters | outside them |", "|---|---:|---:|",
        f"| targeted | {inside[t_name]['mean']:.6f} ± {inside[t_name]['sd']:.6f} | "
        f"{outside[t_name]['mean']:.6f} ± {outside[t_name]['sd']:.6f} |",
        f"| untargeted | {inside[u_name]['mean']:.6f} ± {inside[u_name]['sd']:.6f} | "
        f"{outside[u_name]['mean']:.6f} ± {outside[u_name]['sd']:.6f} |",
        "", f"Seed {report['seeds'][0]['seed']}'s clusters, costliest first:", "",
        "| rank | failures | tasks | cost share | eval queries | targeted saved over base (USD) "
        "| untargeted saved over base (USD) | example |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for c in report["seeds"][0]["clusters"]:
        sv = c["saved_usd"]
        tasks_txt = ", ".join(f"{k} ({v})" for k, v in c["tasks"].items())
        example = (c["examples"][0] if c["examples"] else "")[:60].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['rank']} | {c['failures']} | {tasks_txt} | {100 * c['cost_share']:.1f}% "
                     f"| {c['eval_queries']} "
                     f"| {sv[t_name] - sv['base']:+.6f} | {sv[u_name] - sv['base']:+.6f} | {example} |")
    lines += ["", "## Where queries end (item 3 of the issue)", "",
              "Every query starts at the specialist (no start router here); the share it keeps is the share that "
              "ends there. The learned start-router was not retrained for the new students in this run.", "",
              "| student | specialist share | cost reduction vs frontier-only | (mean over tasks) "
              "| quality retention |",
              "|---|---:|---:|---:|---:|"]
    for name, st in report["students"].items():
        lines.append(f"| {name} | {_pct(st['specialist_share'])} | {_pct(st['cost_reduction'])} "
                     f"| {_pct(st['task_mean_cost_reduction'])} | {_pct(st['quality_retention'])} |")
    seed0 = report["seeds"][0]
    lines += ["", f"## Traffic (seed {seed0['seed']})", "",
              "| task | traffic | base correct | accepted | escalated | accepted & wrong |",
              "|---|---:|---:|---:|---:|---:|"]
    for task, t in seed0["traffic"].items():
        lines.append(f"| {task} | {t['queries']} | {100 * t['base_correct']:.1f}% | {100 * t['accepted']:.1f}% "
                     f"| {t['escalated']} | {t['accepted_wrong']} |")
    lines += ["", "## Method", "",
              f"- Pool: up to {s['pool_per_task']} train rows per task (fixed draw); per seed split into seed part "
              f"{s['seed_share']:.0%} (base pairs), calibration slice {s['calibration_share']:.0%} "
              "(traffic thresholds) "
              f"and traffic (the rest, ≥ {s['min_traffic']}). Validation: per seed, half calibrates each student's "
              "thresholds, the other half is read once.",
              "- Failures: escalations and accepted-but-wrong answers (judged against the reference, standing in for "
              "user feedback). Failure cost: frontier price minus specialist price of the query (estimated tokens, "
              "serve_config.local.yaml prices).",
              f"- Mining: `FailureClusterer` with k = {s['n_clusters']} (fixed: a silhouette search on MiniLM vectors "
              "favours a few task-sized clusters, which would make targeting a choice of tasks), "
              "`rank_clusters` by cost.",
              "- Students: base pairs + extra (query, frontier answer) pairs; label and entity heads refit with the "
              "base's C (picked on the base pairs' held-out slice), the answer cache gets the extra entries. "
              "Untargeted: the same "
              "number of examples drawn uniformly from all traffic (failed or not).",
              "- Thresholds: the quality rule (accepted-and-wrong share ≤ 1 − quality_target, confidence "
              f"{1 - s['delta']:.0%}), "
              "recalibrated per student on the calibration half. Gains are cost reduction vs frontier-only minus the "
              "base's, pooled over tasks in validation's own mix (dollar-weighted).",
              f"- Validation: up to {s['validation_per_task']} rows per task (fixed draw). cs_response's BERTScore is "
              "computed with each text embedded once; it differs from `bertscore_f1` by at most "
              f"{max(report['bertscore_cache_max_abs_diff'].values(), default=0):.1e} on the pairs checked.",
              "- Bootstrap: seeds resampled, then each seed's evaluation queries (paired across students); "
              "thresholds held at their calibrated values.",
              ""]
    return "\n".join(lines)
