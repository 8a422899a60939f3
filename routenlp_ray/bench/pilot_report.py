"""The pilot's report: per week and arm, on the week's traffic and on the held-out slice; the ratio CI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.bench.pilot_plan import DriftPlan
from routenlp_ray.bench.ratio_ci import RATIO_CI_RULE, extended_ratio, point_ratio, ratio_interval
from routenlp_ray.bench.ratio_ci import ratio_ci_text as shared_ratio_ci_text

__all__ = ["SHORTFALL_PHASES", "VERDICTS", "bootstrap_improvement_ratio", "compare_pilots", "comparison_markdown", "pilot_markdown",
           "plot_pilot", "ratio_ci_text", "shortfall_counts", "shortfall_phase", "summarise", "target_checks", "task_attribution"]

FIGURES = ("cost_reduction", "quality_retention", "specialist_share", "accepted_error_rate", "escalation_rate")
TARGETED_ARMS = ("targeted", "targeted_cost")  # the loop's rule (novel_first), and the paper's cost-only rule
RECALIBRATION_ONLY = "recalibrate_only"  # the loop's thresholds refitted each week, nothing distilled


def _mean_sd(values: Sequence[float | None]) -> dict[str, float] | None:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return None
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def bootstrap_improvement_ratio(costs: Mapping[int, Mapping[str, np.ndarray]], frontier: Mapping[int, np.ndarray],
                                reps: int, rng_seed: int = 0, arm: str = "targeted",
                                baseline: str = "no_loop") -> dict[str, Any]:
    """Paired bootstrap of (``arm`` - baseline) / (untargeted - baseline) cost reduction (baseline: no loop, or
    recalibration only, which leaves the distillation's own part).

    ``costs[seed][arm]`` is a (queries, weeks) matrix of costs paid on the held-out slice and
    ``frontier[seed]`` the frontier-only cost per query. Seeds are resampled, then queries within a
    seed (the same rows for every arm and week); improvements are summed over the weeks given.
    """
    rng = np.random.default_rng(rng_seed)
    seeds = sorted(costs)

    def gains(seed: int, pick: np.ndarray) -> tuple[float, float]:
        front = frontier[seed][pick].sum() * costs[seed][baseline].shape[1]
        base = costs[seed][baseline][pick].sum()
        return ((base - costs[seed][arm][pick].sum()) / front,
                (base - costs[seed]["untargeted"][pick].sum()) / front)

    point = np.mean([gains(s, np.arange(len(frontier[s]))) for s in seeds], axis=0)
    ratios, diffs, untargeted = [], [], []
    for _ in range(reps):
        drawn = [gains(s, rng.integers(0, len(frontier[s]), len(frontier[s])))
                 for s in rng.choice(seeds, len(seeds))]
        t, u = np.mean(drawn, axis=0)
        diffs.append(t - u)
        untargeted.append(u)
        ratios.append(extended_ratio(t, u))
    return {
        "targeted_improvement": float(point[0]), "untargeted_improvement": float(point[1]),
        "ratio": point_ratio(point[0], point[1]),
        "ratio_ci95": ratio_interval(ratios),
        "ratio_ci_rule": RATIO_CI_RULE,
        "difference_ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "untargeted_at_most_zero_share": float(np.mean(np.asarray(untargeted) <= 0)),
        "reps": reps,
    }


def summarise(records: list[dict[str, Any]], plan: DriftPlan, settings: Any, seeds_meta: dict[int, Any],
              seconds: float, quality_targets: Mapping[str, float] | None = None) -> dict[str, Any]:
    arms = list(dict.fromkeys(r["arm"] for r in records))
    weeks = sorted({r["week"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    by = {(r["seed"], r["arm"], r["week"]): r for r in records}
    table = []
    for arm in arms:
        for week in weeks:
            rows = [by[(s, arm, week)] for s in seeds if (s, arm, week) in by]
            if not rows:
                continue
            entry: dict[str, Any] = {"arm": arm, "week": week, "seeds": len(rows)}
            for where in ("traffic", "held_out"):
                entry[where] = {k: _mean_sd([r[where][k] for r in rows]) for k in FIGURES}
                tasks = sorted({t for r in rows for t in r[where]["per_task"]})
                entry[where]["per_task"] = {
                    t: {k: _mean_sd([r[where]["per_task"][t][k] for r in rows if t in r[where]["per_task"]])
                        for k in FIGURES} for t in tasks}
            loops = [r["loop"] for r in rows if r.get("loop")]
            entry["releases"] = {o: sum(lp["outcome"] == o for lp in loops)
                                 for o in ("published", "recalibrated", "refused", "nothing_to_distil")}
            entry["seconds"] = _mean_sd([r.get("seconds", 0.0) for r in rows])
            table.append(entry)

    ratios: dict[str, Any] = {}
    over_recalibration: dict[str, Any] = {}
    for arm in TARGETED_ARMS:
        if {"no_loop", arm, "untargeted"} <= set(arms):
            found = _arm_ratios(by, seeds, weeks, arm, settings.bootstrap)
            if found:
                ratios[arm] = found
        if {RECALIBRATION_ONLY, arm, "untargeted"} <= set(arms):
            found = _arm_ratios(by, seeds, weeks, arm, settings.bootstrap, baseline=RECALIBRATION_ONLY)
            if found:
                over_recalibration[arm] = found

    below = []
    for r in records:
        for where in ("traffic", "held_out"):
            for task, m in r[where]["per_task"].items():
                target = (quality_targets or {}).get(task)
                if target is not None and m["quality_retention"] < target:
                    below.append({"seed": r["seed"], "arm": r["arm"], "week": r["week"], "where": where, "task": task,
                                  "retention": m["quality_retention"], "target": target})
    for r in records:
        r.pop("_held_out_costs", None)
        r.pop("_traffic_costs", None)
    return {
        "benchmark": "pilot",
        "plan": plan.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
        "seeds_meta": {str(k): v for k, v in seeds_meta.items()},
        "seconds": seconds,
        # The weeks' serving and loop work, wherever it ran: a resumed run reads finished weeks in seconds.
        "week_seconds": float(sum(r.get("seconds", 0.0) for r in records)),
        "weeks": table,
        "ratios": ratios,
        "ratios_over_recalibration": over_recalibration,
        "below_quality_target": below,
        "quality_targets": dict(quality_targets or {}),
        "records": records,
    }


def _arm_ratios(by: Mapping[tuple[int, str, int], dict[str, Any]], seeds: Sequence[int], weeks: Sequence[int],
                arm: str, reps: int, baseline: str = "no_loop") -> dict[str, Any] | None:
    """``arm`` against untargeted, over ``baseline``: bootstraps at the final week and summed, and traffic means."""
    trio = (baseline, arm, "untargeted")
    complete = [s for s in seeds if all((s, a, w) in by for a in trio for w in weeks)]
    if not complete:
        return None

    def matrices(week_list: Sequence[int]) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, np.ndarray]]:
        costs = {s: {a: np.array([[c[0] for c in by[(s, a, w)]["_held_out_costs"]] for w in week_list]).T
                     for a in trio} for s in complete}
        front = {s: np.array([c[1] for c in by[(s, baseline, week_list[0])]["_held_out_costs"]]) for s in complete}
        return costs, front

    out: dict[str, Any] = {"seeds": complete}
    out["final_week"] = bootstrap_improvement_ratio(*matrices([weeks[-1]]), reps, 1, arm=arm, baseline=baseline)
    out["summed_over_weeks"] = bootstrap_improvement_ratio(*matrices(weeks), reps, 2, arm=arm, baseline=baseline)
    # On each week's own traffic (the same queries for every arm of a seed): point estimates.
    gains: dict[str, list[float]] = {arm: [], "untargeted": []}
    for s in complete:
        base = sum(c[0] for w in weeks for c in by[(s, baseline, w)]["_traffic_costs"])
        front_t = sum(c[1] for w in weeks for c in by[(s, baseline, w)]["_traffic_costs"])
        for a in gains:
            paid = sum(c[0] for w in weeks for c in by[(s, a, w)]["_traffic_costs"])
            gains[a].append((base - paid) / front_t)
    out["traffic_summed_over_weeks"] = {
        "targeted_improvement": _mean_sd(gains[arm]), "untargeted_improvement": _mean_sd(gains["untargeted"]),
        "ratio_of_means": (float(np.mean(gains[arm]) / np.mean(gains["untargeted"]))
                           if np.mean(gains["untargeted"]) > 0 else None)}
    return out


def task_attribution(records: Sequence[Mapping[str, Any]], arms: Sequence[str], week: int,
                     where: str = "held_out") -> dict[str, dict[str, Any]]:
    """Where each arm's improvement over no loop comes from, task by task, at ``week``.

    Per task and arm (mean ± sd over the seeds that ran no loop and every arm): the task's cost saved over no
    loop as a share of all tasks' frontier cost, so a task's figures sum to the arm's improvement; and the
    task's quality retention under no loop and under each arm. A task can cost more than under no loop
    because the loop restored its quality (recalibrated thresholds accept fewer wrong answers); the
    retention columns show when that is so.
    """
    by = {(r["seed"], r["arm"]): r for r in records if r["week"] == week}
    seeds = sorted({s for s, a in by if all((s, b) in by for b in ("no_loop", *arms))})
    tasks = sorted({t for s in seeds for t in by[(s, "no_loop")][where]["per_task"]})
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        entry: dict[str, Any] = {}
        for arm in ("no_loop", *arms):
            saved, retained = [], []
            for seed in seeds:
                base, run = by[(seed, "no_loop")][where], by[(seed, arm)][where]
                frontier = sum(m["frontier_cost_usd"] for m in base["per_task"].values())
                b, m = base["per_task"].get(task), run["per_task"].get(task)
                if b is None or m is None or frontier <= 0:
                    continue
                saved.append((b["cost_usd"] - m["cost_usd"]) / frontier)
                retained.append(m["quality_retention"])
            entry[arm] = {"saved_over_no_loop": _mean_sd(saved), "quality_retention": _mean_sd(retained)}
        out[task] = entry
    return out


def _attribution_lines(records: Sequence[Mapping[str, Any]], arm: str, week: int) -> list[str]:
    ran = {r["arm"] for r in records}
    arms = [a for a in (arm, "untargeted", RECALIBRATION_ONLY) if a in ran]
    table = task_attribution(records, arms, week)
    if not table:
        return []
    lines = [f"Where week {week}'s improvement comes from (held-out slice): each task's cost saved over no loop, as a "
             "share of all frontier cost (a column sums to the arm's improvement), and the task's quality retention.",
             "", "| task | " + " | ".join(f"{a}: saved" for a in arms) + " | retention: no loop | "
             + " | ".join(arms) + " |", "|---|" + "---|" * (2 * len(arms) + 1)]
    for task, e in table.items():
        saved = [e[a]["saved_over_no_loop"] for a in arms]
        kept = [e[a]["quality_retention"] for a in ("no_loop", *arms)]
        lines.append(f"| {task} | " + " | ".join(_signed(x) for x in saved) + " | "
                     + " | ".join(_cell(x) for x in kept) + " |")
    return lines + [""]


def _signed(stat: dict[str, float] | None) -> str:
    return "–" if stat is None else f"{stat['mean']:+.1%} ± {stat['sd']:.1%}"


def _cell(stat: dict[str, float] | None, pct: bool = True) -> str:
    if stat is None:
        return "–"
    if pct:
        return f"{stat['mean']:.1%} ± {stat['sd']:.1%}"
    return f"{stat['mean']:.2f} ± {stat['sd']:.2f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def ratio_ci_text(r: Mapping[str, Any]) -> str:
    """A ratio's 95% CI, with what a reader needs when untargeted gained nothing in some bootstrap draws."""
    return shared_ratio_ci_text(r, _older_ratio_ci_text)


def _older_ratio_ci_text(r: Mapping[str, Any]) -> str:
    """A pilot report made before the all-draws rule: percentiles over the draws with u > 0 only."""
    ci, share = r["ratio_ci95"], r.get("untargeted_at_most_zero_share", 0.0)
    if ci is None:
        return "n/a"
    return _ci(ci) + (f" (over the {1 - share:.1%} of draws where untargeted gained)" if share > 0 else "")


def _run_minutes(report: Mapping[str, Any]) -> str:
    """The run's time; and the weeks' own work when most of it was done by earlier runs this one resumed."""
    run, weeks = report["seconds"] / 60, report.get("week_seconds", 0.0) / 60
    if (report.get("eval_slice") or {}).get("reread_from"):
        return f"{run:.0f} min, re-reading a finished run's releases (its weeks took {weeks:.0f} min)"
    if weeks > 1.5 * run:
        return f"{run:.0f} min, resuming finished weeks (the weeks' serving and loop work took {weeks:.0f} min in all)"
    return f"{run:.0f} min"


def _eval_slice_lines(report: Mapping[str, Any]) -> list[str]:
    """Which validation rows the held-out figures were read on (reports made before this was kept: not said)."""
    where = report.get("eval_slice")
    if not where:
        return []
    rows = where["rows_per_task"]
    text = "The held-out slice: " + ", ".join(f"{t} {n}" for t, n in rows.items() if n) + " validation rows"
    if where["skip"]:
        text += (f", after passing over the first {where['skip']} of each task's fixed order (the rows a slice "
                 f"of that size read before)")
    empty = [t for t, n in rows.items() if not n]
    if empty:
        text += f". Not in it, no validation rows left: {', '.join(empty)}"
    if where.get("reread_from"):
        text += (f". A re-read (`--reread`): the releases the run in `{where['reread_from']}` published, read on this "
                 "slice after it finished; its traffic figures and loop outcomes are that run's")
    return [text + ".", ""]


# The pilot's targets (issue #22): targeted at least this many times untargeted's cost improvement at the final week,
# with the ratio's bootstrap CI above RATIO_CI_FLOOR.
TARGET_RATIO, RATIO_CI_FLOOR = 2.0, 1.0


def target_checks(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target, whether the report meets it, and the figures it was read from. ``met`` is None for a ratio
    that has no value because untargeted gained nothing while the CI lies above the floor: read its difference.

    The ratio target per targeted arm and baseline; retention at or above each task's target in every cell;
    and the targeted arm's held-out cost falling every week from the first week with drift.
    """
    checks: list[dict[str, Any]] = []
    families = [("no loop", report.get("ratios", {})), ("recalibration only", report.get("ratios_over_recalibration", {}))]
    for over, by_arm in families:
        for arm, arm_ratios in by_arm.items():
            r = arm_ratios["final_week"]
            low = float(r["ratio_ci95"][0])
            met: bool | None = r["ratio"] is not None and r["ratio"] >= TARGET_RATIO and low > RATIO_CI_FLOOR
            if r["ratio"] is None and low > RATIO_CI_FLOOR:
                met = None  # untargeted gained nothing, targeted did: no ratio to hold to 2×; the difference says it
            ratio = "n/a (untargeted gained nothing)" if r["ratio"] is None else f"{r['ratio']:.2f}×"
            checks.append({
                "target": f"{arm} ≥ {TARGET_RATIO:g}× untargeted over {over}, final week, CI lower bound > "
                          f"{RATIO_CI_FLOOR:g}",
                "met": met,
                "evidence": f"ratio {ratio}, 95% CI {ratio_ci_text(r)}; difference "
                            f"[{r['difference_ci95'][0]:+.1%}, {r['difference_ci95'][1]:+.1%}]",
            })
    below = report.get("below_quality_target", [])
    plan = DriftPlan.model_validate(report["plan"])
    missed, _ = shortfall_counts(report, plan)
    arms = list(dict.fromkeys(e["arm"] for e in report["weeks"]))
    after = ("; after the drift's first week: "
             + ", ".join(f"{a} {missed.get(a, {}).get('after_first_drift_week', 0)}" for a in arms)
             if plan.drifts else "; the plan has no drift")
    checks.append({
        "target": "retention at or above each task's quality target in every week, arm and seed",
        "met": not below,
        "evidence": f"{len(below)} cells below{after} (see Quality targets)",
    })
    drift_weeks = [d.from_week for d in plan.drifts]
    for arm in TARGETED_ARMS:
        series = {e["week"]: e["held_out"]["cost_reduction"]["mean"] for e in report["weeks"]
                  if e["arm"] == arm and e["held_out"]["cost_reduction"] is not None}
        if not series or not drift_weeks:
            continue
        weeks = [w for w in sorted(series) if w >= min(drift_weeks)]
        if len(weeks) < 2:
            continue
        rose = [w for w, prev in zip(weeks[1:], weeks) if series[w] <= series[prev]]
        checks.append({
            "target": f"{arm}'s held-out cost falls week over week from week {weeks[0]}, the first with drift",
            "met": not rose,
            "evidence": "cost reduction " + " → ".join(f"{series[w]:.1%}" for w in weeks)
                        + (f"; not lower than the week before in week {', '.join(map(str, rose))}" if rose else ""),
        })
    return checks


# How a target check's ``met`` reads.
VERDICTS = {True: "met", False: "not met", None: "cannot tell"}


def _target_lines(report: Mapping[str, Any]) -> list[str]:
    def verdict(met: bool | None) -> str:
        return f"**{VERDICTS[met]}**" if met is False else VERDICTS[met]

    lines = ["## Against the targets (held-out slice, mean over seeds)", "", "| target | | read from |", "|---|---|---|"]
    lines += [f"| {c['target']} | {verdict(c['met'])} | {c['evidence']} |" for c in target_checks(report)]
    return lines + [""]


# When a cell fell below its quality target, relative to its task's drift (``shortfall_phase``).
SHORTFALL_PHASES = {
    "no_drift": "no drift in what was read",
    "drift_not_in_traffic": "drift in the slice, not yet in traffic",
    "first_drift_week": "the drift's first week",
    "after_first_drift_week": "later weeks",
}


def shortfall_phase(plan: DriftPlan, cell: Mapping[str, Any]) -> str:
    """Where a below-target cell sits against its task's drift.

    ``no_drift``: the task has no drift, or the week's traffic did not show it yet: the threshold's own miss.
    ``drift_not_in_traffic``: the held-out slice holds the new labels or task before any traffic did, so no
    release could have learnt them. ``first_drift_week``: the week the drift reaches traffic; the release serving
    it was published before any loop saw the drift. ``after_first_drift_week``: a loop arm has run on drifted
    traffic at least once (no_loop never does).
    """
    drift = plan.drift_of(cell["task"])
    if drift is None or (cell["where"] == "traffic" and cell["week"] < drift.from_week):
        return "no_drift"
    if cell["week"] < drift.from_week:
        return "drift_not_in_traffic"
    return "first_drift_week" if cell["week"] == drift.from_week else "after_first_drift_week"


def shortfall_counts(report: Mapping[str, Any], plan: DriftPlan
                     ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Per arm and phase: the cells below their target, and every cell read (a count's denominator)."""
    targets = report.get("quality_targets") or {}
    missed: dict[str, dict[str, int]] = {}
    for b in report.get("below_quality_target", []):
        counts = missed.setdefault(b["arm"], dict.fromkeys(SHORTFALL_PHASES, 0))
        counts[shortfall_phase(plan, b)] += 1
    read: dict[str, dict[str, int]] = {}
    for r in report.get("records", []):
        for where in ("traffic", "held_out"):
            for task in r[where]["per_task"]:
                if task in targets:
                    counts = read.setdefault(r["arm"], dict.fromkeys(SHORTFALL_PHASES, 0))
                    counts[shortfall_phase(plan, {"task": task, "week": r["week"], "where": where})] += 1
    return missed, read


def _quality_target_lines(report: Mapping[str, Any]) -> list[str]:
    """The below-target cells: counted per arm by where they sit against the drift, then listed."""
    below = report["below_quality_target"]
    lines = ["## Quality targets", ""]
    if not below:
        return lines + ["Every task's retention stayed at or above its quality target in every week, arm and seed."]
    plan = DriftPlan.model_validate(report["plan"])
    missed, read = shortfall_counts(report, plan)
    lines += [f"{len(below)} (seed, arm, week, where, task) cells fell below their task's quality target. "
              "By where each sits against its task's drift (below target / cells read):", "",
              "| arm | all | " + " | ".join(SHORTFALL_PHASES.values()) + " |",
              "|---|---|" + "---|" * len(SHORTFALL_PHASES)]
    for arm, counts in read.items():
        mine = missed.get(arm, {})
        lines.append(f"| {arm} | {sum(mine.values())} / {sum(counts.values())} | "
                     + " | ".join(f"{mine.get(p, 0)} / {counts[p]}" for p in SHORTFALL_PHASES) + " |")
    lines += ["", "No loop had seen the drift in the middle two columns: a weekly loop cannot reach them (the live "
              "monitor, which acts within a week, is not simulated here). A cell reads one task on one week's traffic "
              "or on the held-out slice, a sample of a few hundred queries at most, so a threshold that meets its "
              "target on average still misses it in some cells.", "",
              "| seed | arm | week | where | task | retention | target | against the drift |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {b['seed']} | {b['arm']} | {b['week']} | {b['where']} | {b['task']} | {b['retention']:.1%} "
              f"| {b['target']:.0%} | {SHORTFALL_PHASES[shortfall_phase(plan, b)]} |" for b in below]
    return lines


def _calibration_lines(settings: dict[str, Any]) -> list[str]:
    """What the loop calibrated and gated on (a report made before the setting was added used the fixed slice)."""
    size = settings.get("calibration_per_task", 200)
    if settings.get("calibration_rows", "fixed") == "fixed":
        return [f"Loop calibration rows: the same {size} labelled train rows per task every week (of the labels "
                "traffic has shown so far).", ""]
    return [f"Loop calibration rows: audited traffic, {settings['audited_per_task']} rows per task a week drawn "
            f"from the week's stream outside the served queries, in a window of {size} per task (newest first, the "
            "calibration slice filling the rest). The audits' frontier calls are not in the cost figures.", ""]


def pilot_markdown(report: dict[str, Any], command: str, baseline: dict[str, Any] | None = None) -> str:
    plan, s = report["plan"], report["settings"]
    lines = [
        f"# Pilot: {plan['name']} plan, {s['weeks']} weeks × {s['queries_per_week']} queries, "
        f"{len(s['seeds'])} seeds",
        "",
        f"Made by `{command}` in {_run_minutes(report)}. Drift plan:",
        "",
    ]
    lines += [f"- {d['task']}: " + ("the whole task" if d["whole_task"] else
                                    f"{d['label_share']:.0%} of its labels" if d["label_share"] else
                                    f"labels {d['labels']}") + f" new from week {d['from_week']}"
              for d in plan["drifts"]] or ["- none"]
    lines += ["", "Costs are the cascade's cost against sending every query to the frontier (lower is better); "
              "held-out is a fixed validation slice with every label, read with each arm's release of that week.", ""]
    lines += _calibration_lines(s)
    lines += _eval_slice_lines(report)
    lines += _target_lines(report)
    for where, title in (("held_out", "Held-out slice (validation)"), ("traffic", "That week's traffic (train)")):
        lines += [f"## {title}", "",
                  "| week | arm | cost reduction | quality retention | specialist share | accepted-error rate "
                  "| escalation rate | releases (published / recalibrated only / refused / nothing) |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in sorted(report["weeks"], key=lambda e: (e["week"], e["arm"])):
            m = e[where]
            rel = e["releases"]
            lines.append(f"| {e['week']} | {e['arm']} | {_cell(m['cost_reduction'])} | {_cell(m['quality_retention'])} "
                         f"| {_cell(m['specialist_share'])} | {_cell(m['accepted_error_rate'])} "
                         f"| {_cell(m['escalation_rate'])} | {rel['published']} / {rel.get('recalibrated', 0)} / {rel['refused']} / "
                         f"{rel['nothing_to_distil']} |")
        lines.append("")
    families = [(arm, r, "no loop") for arm, r in report["ratios"].items()]
    families += [(arm, r, "recalibration only") for arm, r in report.get("ratios_over_recalibration", {}).items()]
    for arm, arm_ratios, over in families:
        lines += [f"## {arm} vs untargeted, over {over} (held-out slice, paired bootstrap over seeds and queries)",
                  "", f"| span | {arm} improvement | untargeted improvement | ratio | ratio 95% CI | difference 95% CI |",
                  "|---|---|---|---|---|---|"]
        for key, name in (("final_week", "final week"), ("summed_over_weeks", "summed over weeks")):
            r = arm_ratios[key]
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}×"
            lines.append(f"| {name} | {r['targeted_improvement']:+.1%} | {r['untargeted_improvement']:+.1%} | {ratio} "
                         f"| {ratio_ci_text(r)} | [{r['difference_ci95'][0]:+.1%}, {r['difference_ci95'][1]:+.1%}] |")
        t = arm_ratios["traffic_summed_over_weeks"]
        lines += ["", f"On the weeks' own traffic, summed: {arm} {_cell(t['targeted_improvement'])}, untargeted "
                  f"{_cell(t['untargeted_improvement'])} of frontier cost saved over {over}"
                  + (f" (ratio of means {t['ratio_of_means']:.2f}×)." if t["ratio_of_means"] else "."), ""]
        if over == "no loop":
            lines += _attribution_lines(report["records"], arm, max(e["week"] for e in report["weeks"]))
    lines += _quality_target_lines(report)
    if baseline is not None:
        lines += ["", f"## Next to it: the {baseline['plan']['name']} plan", ""]
        r = baseline["ratios"].get("targeted", {}).get("final_week")
        if r:
            lines.append(f"Final week: targeted {r['targeted_improvement']:+.1%}, untargeted "
                         f"{r['untargeted_improvement']:+.1%} over no loop; ratio "
                         f"{'n/a' if r['ratio'] is None else format(r['ratio'], '.2f') + '×'}, CI {ratio_ci_text(r)}.")
    return "\n".join(lines) + "\n"


def plot_pilot(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, where, title in zip(axes, ("held_out", "traffic"), ("held-out slice", "that week's traffic")):
        for arm in dict.fromkeys(e["arm"] for e in report["weeks"]):
            rows = sorted((e for e in report["weeks"] if e["arm"] == arm), key=lambda e: e["week"])
            x = [e["week"] for e in rows]
            y = [1 - e[where]["cost_reduction"]["mean"] for e in rows]
            err = [e[where]["cost_reduction"]["sd"] for e in rows]
            axis.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
        for d in report["plan"]["drifts"]:
            axis.axvline(d["from_week"] - 0.5, color="grey", lw=0.8, ls=":")
        axis.set_title(f"cost per week, {title}")
        axis.set_xlabel("week")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("cost / frontier-only cost")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- finished pilots side by side (a budget sweep) ------------------------------------------------------
def compare_pilots(reports: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """Finished pilots side by side, one row each, keyed by the settings that differ between them.

    Made for a sweep of one setting (the weekly budget): a row holds each targeted arm's ratio over
    untargeted (over no loop and over recalibration only) at the final week, the same on the weeks' own
    traffic (train), the arms' releases and their cells below a quality target. Nothing is re-run.
    """
    if len(reports) < 2:
        raise ValueError("a comparison needs at least two finished pilots")
    for report, source in zip(reports, sources):
        if report.get("benchmark") != "pilot" or "ratios" not in report:
            raise ValueError(f"{source}: not a `bench pilot` report (no benchmark: pilot and ratios)")
    plans = {r["plan"]["name"] for r in reports}
    keys = sorted({k for r in reports for k in r["settings"]})
    varied = [k for k in keys if len({repr(r["settings"].get(k)) for r in reports}) > 1]
    rows = []
    for report, source in zip(reports, sources):
        arms = dict.fromkeys(e["arm"] for e in report["weeks"])
        final = max(e["week"] for e in report["weeks"])
        releases = {arm: {o: sum(e["releases"].get(o, 0) for e in report["weeks"] if e["arm"] == arm)
                          for o in ("published", "recalibrated", "refused", "nothing_to_distil")} for arm in arms}
        below = {arm: sum(b["arm"] == arm for b in report["below_quality_target"]) for arm in arms}
        held_out = {e["arm"]: e["held_out"]["cost_reduction"] for e in report["weeks"] if e["week"] == final}
        rows.append({
            "source": source, "settings": {k: report["settings"].get(k) for k in varied},
            "plan": report["plan"]["name"], "seeds": report["settings"]["seeds"],
            "final_week_cost_reduction": held_out,
            "ratios": {arm: {"final_week": r["final_week"], "traffic_summed_over_weeks": r["traffic_summed_over_weeks"]}
                       for arm, r in report["ratios"].items()},
            "ratios_over_recalibration": {arm: {"final_week": r["final_week"]}
                                          for arm, r in report.get("ratios_over_recalibration", {}).items()},
            "releases": releases, "below_quality_target": below,
            "seconds": report["seconds"], "week_seconds": report.get("week_seconds", 0.0),
        })
    return {"benchmark": "pilot_comparison", "plans": sorted(plans), "varied_settings": varied, "rows": rows}


def _setting_text(value: Any) -> str:
    """A setting as a reader writes it: a run of consecutive seeds as 0–4, other lists comma-separated."""
    if isinstance(value, list):
        if len(value) > 2 and all(isinstance(v, int) for v in value) and value == list(range(value[0], value[-1] + 1)):
            return f"{value[0]}–{value[-1]}"
        return ", ".join(str(v) for v in value)
    return str(value)


def comparison_markdown(comparison: Mapping[str, Any], command: str) -> str:
    varied = comparison["varied_settings"] or ["source"]

    def key(row: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} {_setting_text(row['settings'][k])}" for k in comparison["varied_settings"]
                         ) or row["source"]

    def setting_cells(row: Mapping[str, Any]) -> str:
        return "| " + " | ".join(_setting_text(row["settings"].get(k, row["source"])) for k in varied) + " | "

    rows = comparison["rows"]
    lines = [f"# Pilots side by side: {', '.join(comparison['plans'])} plan, varying {', '.join(varied)}", "",
             f"Made by `{command}` from finished pilots (nothing re-run):", ""]
    lines += [f"- {key(r)}: `{r['source']}`: seeds {_setting_text(r['seeds'])}, {_run_minutes(r)}"
              for r in rows]
    arms = list(dict.fromkeys(a for r in rows for a in r["final_week_cost_reduction"]))
    lines += ["", "## Final week, held-out slice: cost reduction against frontier-only", "",
              "| " + " | ".join(varied) + " | " + " | ".join(arms) + " |", "|" + "---|" * (len(varied) + len(arms))]
    for r in rows:
        lines.append(setting_cells(r) + " | ".join(_cell(r["final_week_cost_reduction"].get(a)) for a in arms) + " |")
    for family, over in (("ratios", "no loop"), ("ratios_over_recalibration", "recalibration only")):
        targeted = list(dict.fromkeys(a for r in rows for a in r[family]))
        for arm in targeted:
            lines += ["", f"## {arm} vs untargeted, over {over}: final week, held-out slice "
                          "(paired bootstrap over seeds and queries)", "",
                      "| " + " | ".join(varied) + f" | {arm} improvement | untargeted improvement | ratio | ratio 95% CI "
                      "| difference 95% CI |" + (" on the weeks' traffic, summed: ratio of means |"
                                                 if family == "ratios" else ""),
                      "|" + "---|" * (len(varied) + 5 + (family == "ratios"))]
            for r in rows:
                found = r[family].get(arm)
                if not found:
                    continue
                f = found["final_week"]
                ratio = "n/a" if f["ratio"] is None else f"{f['ratio']:.2f}×"
                cells = [f"{f['targeted_improvement']:+.1%}", f"{f['untargeted_improvement']:+.1%}", ratio,
                         ratio_ci_text(f), f"[{f['difference_ci95'][0]:+.1%}, {f['difference_ci95'][1]:+.1%}]"]
                if family == "ratios":
                    t = found["traffic_summed_over_weeks"]
                    cells.append("n/a" if t["ratio_of_means"] is None else f"{t['ratio_of_means']:.2f}×")
                lines.append(setting_cells(r) + " | ".join(cells) + " |")
    lines += ["", "## Releases over all weeks and seeds (published / recalibrated only / refused / nothing), "
                  "and cells below a quality target", "",
              "| " + " | ".join(varied) + " | " + " | ".join(arms) + " |", "|" + "---|" * (len(varied) + len(arms))]
    for r in rows:
        cells = []
        for a in arms:
            rel = r["releases"].get(a)
            cells.append("–" if rel is None else f"{rel['published']} / {rel['recalibrated']} / {rel['refused']} / "
                         f"{rel['nothing_to_distil']}; {r['below_quality_target'].get(a, 0)} below")
        lines.append(setting_cells(r) + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
