"""``routenlp bench loop``'s report: the JSON as measured, and Markdown a reviewer reads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from routenlp_ray.bench.loop_experiment import STUDENTS
from routenlp_ray.bench.ratio_ci import ratio_ci_text, ratio_is_informative
from routenlp_ray.bench.report import write_report

VARIANTS = ("base", *STUDENTS)


def _pp(stat: Mapping[str, float]) -> str:
    return f"{stat['mean'] * 100:+.2f} ± {stat['sd'] * 100:.2f} pp"


def _pct(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.1%} ± {stat['sd']:.1%}"


def _ci(interval: list[float] | None, scale: float = 1.0, unit: str = "") -> str:
    if interval is None:
        return "n/a"
    return f"[{interval[0] * scale:+.2f}, {interval[1] * scale:+.2f}]{unit}"


def _ratio_ci(boot: Mapping[str, Any]) -> str:
    """The ratio's CI; a report made before the all-draws rule dropped only the draws where u == 0."""
    return ratio_ci_text(boot, lambda older: _ci(older["ratio_ci95"]))


def _rehearsed(point: Mapping[str, Any]) -> str:
    """How much of each set the LoRA student rehearsed; reports made before rehearsal have no such key."""
    rehearsed = point.get("rehearsed")
    if not rehearsed or not rehearsed["mean"]:
        return ""
    return f", {rehearsed['mean']:.0f} of them rehearsed from the pairs the current adapter was distilled on"


def _verdict(gate: Mapping[str, Any] | None) -> str:
    if gate is None:
        return "n/a"
    return "passed" if gate["passed"] else "failed (" + "; ".join(gate["reasons"]) + ")"


def write_loop_experiment_report(report: dict[str, Any], out: str | Path, command: str | None = None) -> Path:
    """Write ``out`` (JSON) and its ``.md``; returns the Markdown's path. ``command`` defaults to this process's."""
    write_report(out, report, command=command,
                 markdown=lambda written: loop_experiment_markdown(report, written["command"]))
    return Path(out).with_suffix(".md")


def _ratio_line(point: Mapping[str, Any]) -> str:
    boot = point["bootstrap"]
    ratio = "n/a (no untargeted gain)" if point["ratio"] is None else f"{point['ratio']:.2f}×"
    line = (f"targeted/untargeted ratio of cost improvement over the current student: **{ratio}**, bootstrap 95% CI "
            f"{_ratio_ci(boot)} (seeds × held-out queries, {boot['reps']} reps); difference targeted − "
            f"untargeted: 95% CI {_ci(boot['difference_ci95'], 100, ' pp')}.")
    if not ratio_is_informative(boot):
        line += (" The ratio's CI reaches 0 or below, or is unbounded above: the untargeted gain cannot be told"
                 " from 0, so the ratio's point value carries no information; read the difference.")
    return line


def loop_experiment_markdown(report: dict[str, Any], command: str) -> str:
    settings = report["settings"]
    head = report["headline"]
    distill = settings["distill"]
    specialist = report.get("student_kind") == "specialist"
    if specialist:
        spend = ("each touched head refitted on the pairs it was fitted on plus the student's, with the C its base "
                 "chose (a Ray Train job); heads of other tasks carried over unchanged")
    else:
        spend = (f"{distill['max_steps']} LoRA steps of {distill['batch_size']}, learning rate "
                 f"{distill['learning_rate']}, from the shipped adapter")
    lines = [
        "# The loop at real scale: targeted vs untargeted distillation into the "
        + ("specialist tier" if specialist else "LoRA student"),
        "",
        f"Command: `{command}` (this invocation: {report['wall_s'] / 60:.1f} min on the shared 2-core CPU; a "
        "rerun reuses every stage cached under the workdir, so its time is not the experiment's).",
        "",
        f"Student tier `{report['student_tier']}`, continuing `{report['starts_from']['artifact']}`"
        + (f" (distilled here on a seeded {settings['specialist_base_share']:.0%} of each train split, which no "
           "traffic query comes from)" if settings.get("specialist_base_share") else "")
        + f". Traffic: {settings['traffic_per_task']} train queries per task ({', '.join(settings['tasks'])}; equal mix) sent "
        "through `RouterService` with the embedded default's engines in process, so the log is the served router's. "
        f"Mining: {settings['n_clusters']} clusters; the targeted set is the frontier's answers to the failures of the "
        f"fewest costliest clusters covering a share f of failure cost (headline f = {settings['top_cost_shares'][0]}), "
        f"at most {settings['budget']}; the "
        "untargeted set is as many queries drawn from all traffic. Every student: "
        f"{spend}. Evaluation: {settings['eval_per_task']} validation rows per task (no traffic query "
        "comes from validation), the same rows for every seed and student; each student's threshold is recalibrated "
        f"(split-conformal, α = {settings['alpha']}) on one half and its cascade (student → frontier) read on the other.",
        "",
        f"## Headline (clusters covering f = {head['top_cost_share']:.0%} of failure cost, at most "
        f"{head['budget_cap']} examples per student, {len(head['seeds'])} seeds)",
        "",
        "- " + _ratio_line(head),
        f"- Cost-reduction improvement over the current student, mean ± sd over seeds: targeted "
        f"{_pp(head['gain']['targeted'])}, untargeted {_pp(head['gain']['untargeted'])} "
        f"({head['examples']['mean']:.0f} examples{_rehearsed(head)}; the selected clusters cover "
        f"{head['selected_cost_share']['mean']:.0%} ± {head['selected_cost_share']['sd']:.0%} of failure cost).",
        f"- The student's own accuracy on the held-out rows (threshold-free), gain over the current student: "
        f"targeted {_pp(head['accuracy_gain']['targeted'])}, untargeted {_pp(head['accuracy_gain']['untargeted'])} "
        f"(current {_pct(head['accuracy']['base'])}).",
        "- Cost reduction vs frontier-only: " + ", ".join(f"{v} {_pct(head['cost_reduction'][v])}" for v in VARIANTS)
        + "; quality retention: " + ", ".join(f"{v} {_pct(head['quality_retention'][v])}" for v in VARIANTS) + ".",
        "",
        "Per seed (cost-reduction gain over the current student, pp):",
        "",
        "| seed | examples | clusters selected (of failures' cost) | targeted | untargeted | gate: targeted / untargeted |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for seed in head["seeds"]:
        clusters = ", ".join(f"{'/'.join(c['tasks'])} {c['share']:.0%}" for c in seed["selected_clusters"])
        lines.append(f"| {seed['seed']} | {seed['budget']} | {clusters} | {seed['gain']['targeted'] * 100:+.2f} | "
                     f"{seed['gain']['untargeted'] * 100:+.2f} | {_verdict(seed['gate'])} / "
                     f"{_verdict(seed.get('untargeted_gate'))} |")
    lines += ["", "## Budget curve", "",
              "Budget size: the targeted clusters cover a share f of the failure cost; their failures, at most "
              f"{head['budget_cap']}, are the targeted set, and the untargeted set is as large.",
              "",
              "| f | seeds | examples | targeted gain | untargeted gain | ratio | ratio 95% CI | t − u 95% CI "
              "| targeted acc. gain | untargeted acc. gain |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for point in report["curve"]:
        ratio = "n/a" if point["ratio"] is None else f"{point['ratio']:.2f}×"
        boot = point["bootstrap"]
        lines.append(f"| {point['top_cost_share']:.2f} | {len(point['seeds'])} | {point['examples']['mean']:.0f} | "
                     f"{_pp(point['gain']['targeted'])} | "
                     f"{_pp(point['gain']['untargeted'])} | {ratio} | {_ratio_ci(boot)} | "
                     f"{_ci(boot['difference_ci95'], 100, ' pp')} | {_pp(point['accuracy_gain']['targeted'])} | "
                     f"{_pp(point['accuracy_gain']['untargeted'])} |")
    lines += ["", f"## Per task (f = {head['top_cost_share']:.2f})", "",
              "Cost gain and accuracy gain are over the current student; retention is current → targeted / untargeted.",
              "",
              "| task | examples t / u | current cost red. | targeted cost gain | untargeted cost gain | current accuracy "
              "| targeted acc. gain | untargeted acc. gain | retention |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for task, row in head["per_task"].items():
        lines.append(
            f"| {task} | {row['targeted_examples']['mean']:.0f} / {row['untargeted_examples']['mean']:.0f} | "
            f"{_pct(row['base_cost_reduction'])} | {_pp(row['targeted_gain'])} | {_pp(row['untargeted_gain'])} | "
            f"{_pct(row['base_accuracy'])} | {_pp(row['targeted_accuracy_gain'])} | "
            f"{_pp(row['untargeted_accuracy_gain'])} | {row['base_retention']['mean']:.1%} → "
            f"{row['targeted_retention']['mean']:.1%} / {row['untargeted_retention']['mean']:.1%} |")
    lines += _cluster_lines(head)
    if "router" in head:
        lines += ["", "## Start router retrained for each student", "",
                  "Fitted, and its per-task targets chosen, on the calibration half of each student's answers; "
                  "read on the other half.", "",
                  "| student | starts at the student | starts at the frontier | router + cascade cost reduction |",
                  "|---|---:|---:|---:|"]
        for variant in VARIANTS:
            router = head["router"][variant]
            shares = list(router["start_share"].values())
            lines.append(f"| {variant} | {_pct(shares[0])} | {_pct(shares[-1])} | "
                         f"{_pct(router['router_cascade_cost_reduction'])} |")
    if "iterations" in report:
        lines += ["", "## Two iterations back to back", ""] + _iterations_lines(report["iterations"])
    return "\n".join(lines) + "\n"


def _iterations_lines(iterations: dict[str, Any]) -> list[str]:
    if iterations.get("second") is None:
        return [f"- {iterations.get('note', 'no second iteration')}"]
    lines = ["| iteration | starts from | queries mined | failures | current cost red. | targeted cost red. | "
             "quality retention (current → targeted) | gate | published |",
             "|---|---|---:|---:|---:|---:|---|---|---|"]
    for name in ("first", "second"):
        it = iterations[name]
        start = it["starts_from"]
        lines.append(
            f"| {name} | {start['release'] or 'configured'} (`{start['artifact']}`) | {it['queries_mined']} | "
            f"{it['failures']} | {it['cost_reduction']['base']:.1%} | {it['cost_reduction']['targeted']:.1%} | "
            f"{it['quality_retention']['base']:.1%} → {it['quality_retention']['targeted']:.1%} | "
            f"{'passed' if it['gate']['passed'] else 'failed'} | {it['published'] or 'nothing'} |")
    return lines


def _cluster_lines(head: Mapping[str, Any]) -> list[str]:
    split = head["gain_by_cluster"]
    lines = ["", f"## Per cluster (f = {head['top_cost_share']:.2f})", "",
             "Each held-out query is assigned to the failure cluster nearest to it (centroid of the cluster's "
             "failures in the mining encoder). Gain over the current student on the queries nearest to the "
             "selected clusters and to the others, in pp of the held-out frontier cost (the two add up to the "
             "cost-reduction gain), mean ± sd over seeds:", "",
             "| student | nearest to selected clusters | nearest to other clusters |", "|---|---:|---:|"]
    for variant in STUDENTS:
        lines.append(f"| {variant} | {_pp(split[variant]['selected'])} | {_pp(split[variant]['other'])} |")
    first = head["seeds"][0]
    lines += ["", f"Seed {first['seed']}, every cluster, costliest first (gains in USD over the current student):", "",
              "| rank | selected | failures | tasks | share of failure cost | held-out queries | targeted gain "
              "| untargeted gain |", "|---:|---|---:|---|---:|---:|---:|---:|"]
    for c in first["clusters"]:
        tasks = ", ".join(f"{t} {n}" for t, n in c["tasks"].items())
        lines.append(f"| {c['rank']} | {'yes' if c['selected'] else ''} | {c['failures']} | {tasks} | "
                     f"{c['cost_share']:.0%} | {c['eval_queries']} | {c['targeted_gain_usd']:+.4f} | "
                     f"{c['untargeted_gain_usd']:+.4f} |")
    return lines
