"""Does the quality rule's promise hold on queries from unseen groups (contracts)? Row-level vs grouped.

For each task with a group field in its data rows (legal_clause: ``contract``; legal_risk:
``document``), the recorded specialist answers to the validation split are split by group, many
times at random: the thresholds are calibrated on half of the groups, then the share of the other
half's queries that the specialist answers wrong *and* is accepted on is measured. The task's budget
is ``1 - quality_target`` (epsilon) at confidence ``1 - delta``. The promise is about the expected
share on new groups; the share measured on a held-out half also carries that half's own sampling
noise, so even a valid rule exceeds the budget there in somewhat more than ``delta`` of the splits:
the control below measures how much more. Compared:

- ``rows``: the shipped rule (exact binomial over calibration queries, as if they were exchangeable);
- ``groups``: the same rule certified over groups (Hoeffding-Bentkus over per-group loss shares,
  :func:`routenlp_ray.conformal.calibrator.quality_controlling_threshold` with ``groups``);
- ``design_effect``: the row-level rule on ``n / deff`` rows, deff the cluster-robust over the
  independent variance of the accepted loss share (``group_rule="design_effect"``);
- ``rows_split_by_row`` (the control): the row-level rule on halves drawn by row, not by group. Its
  violation rate is what the rule shows when the data are exchangeable (the held-out half's own
  sampling noise included); any excess of ``rows`` over it is the cost of the shift between groups.

    .venv/bin/python benchmarks/grouped_calibration.py --records var/records/embedded-v4 --splits 1000 \
        --out results/grouped_calibration_v4_records.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPED_TASKS = ["legal_clause", "legal_risk"]  # the built-in tasks with a group_field (contract, document)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_config.local.yaml")
    parser.add_argument("--data-dir", default=os.environ.get("ROUTENLP_DATA", "../shared/data"))
    parser.add_argument("--records", required=True)
    parser.add_argument("--tier", default="specialist")
    parser.add_argument("--tasks", nargs="+", default=GROUPED_TASKS)
    parser.add_argument("--splits", type=int, default=200, help="random halvings of the groups")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np

    from routenlp_ray.config import load_config
    from routenlp_ray.conformal.calibrator import design_effect, quality_controlling_threshold
    from routenlp_ray.conformal.scores import get_uncertainty_score
    from routenlp_ray.recording.tables import load_tables
    from routenlp_ray.tasks.data import row_groups

    config = load_config(args.config)
    results = {"command": "python " + " ".join(sys.argv), "records": args.records, "tier": args.tier,
               "delta": args.delta, "splits": args.splits, "tasks": {}}
    for task in args.tasks:
        spec = config.task(task)
        score_name = config.cascade.uncertainty_per_task.get(task, config.cascade.uncertainty)
        alone = config.model_copy(update={"tiers": [config.tier(args.tier), config.frontier]})
        [table] = load_tables(alone, [Path(args.records)], Path(args.data_dir), [task], ["validation"],
                              get_uncertainty_score(score_name))
        group_of = row_groups(spec, args.data_dir, ["validation"])
        if not group_of:
            raise SystemExit(f"task {task!r} has no group_field: nothing to split by group")
        groups = np.array([group_of[i] for i in table.ids])
        u, ok = table.uncertainty[:, 0], table.correct[:, 0] > 0
        epsilon = 1 - spec.quality_target
        names = np.unique(groups)
        rng = np.random.default_rng(args.seed)
        outcome = {"rows": [], "groups": [], "design_effect": [], "rows_split_by_row": []}
        for _ in range(args.splits):
            cal_groups = set(rng.permutation(names)[: len(names) // 2].tolist())
            by_group = np.array([g in cal_groups for g in groups])
            # The control: the row-level rule on halves drawn by row, which ignore the contracts, of the
            # same size. Any excess of "rows" over it is what the shift between contracts costs.
            by_row = np.zeros(len(u), dtype=bool)
            by_row[rng.permutation(len(u))[: int(by_group.sum())]] = True
            for rule in outcome:
                cal = by_row if rule == "rows_split_by_row" else by_group
                grouped = None if rule.startswith("rows") else groups[cal].tolist()
                threshold = quality_controlling_threshold(u[cal], ok[cal], epsilon, args.delta, groups=grouped,
                                                          group_rule="exact" if rule == "groups" else "design_effect")
                accepted = ~cal & ~np.isnan(u) & (u <= (threshold if threshold is not None else -np.inf))
                held = int((~cal).sum())
                bad = float((accepted & ~ok).sum()) / held
                # How clustered the calibration half's accepted errors are at this threshold (1: not at all).
                cal_accepted_wrong = (~np.isnan(u[cal]) & (u[cal] <= (threshold if threshold is not None else -np.inf))
                                      & ~ok[cal]).astype(float)
                deff = design_effect(cal_accepted_wrong, np.unique(groups[cal], return_inverse=True)[1])
                outcome[rule].append({"threshold": threshold, "accepted": float(accepted.sum()) / held,
                                      "accepted_and_wrong": bad, "violated": bad > epsilon, "design_effect": deff})
        summary = {}
        for rule, rows in outcome.items():
            summary[rule] = {
                "violation_rate": float(np.mean([r["violated"] for r in rows])),
                "mean_accepted_and_wrong": float(np.mean([r["accepted_and_wrong"] for r in rows])),
                "p90_accepted_and_wrong": float(np.quantile([r["accepted_and_wrong"] for r in rows], 0.9)),
                "mean_accepted_share": float(np.mean([r["accepted"] for r in rows])),
                "splits_with_no_threshold": int(sum(r["threshold"] is None for r in rows)),
                "mean_design_effect_at_threshold": float(np.mean([r["design_effect"] for r in rows])),
            }
        results["tasks"][task] = {"group_field": spec.group_field, "n_rows": len(u), "n_groups": len(names),
                                  "specialist_accuracy": float(ok.mean()), "epsilon": epsilon,
                                  "bound": f"accepted-and-wrong share <= {epsilon:.3g} on held-out groups in "
                                           f">= {1 - args.delta:.0%} of splits", **summary}
        print(json.dumps({task: results["tasks"][task]}, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
