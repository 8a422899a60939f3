"""Does the quality rule's promise hold on queries from unseen groups (contracts)? Row-level vs grouped.

For each task with a group field in its data rows (legal_clause: ``contract``; legal_risk:
``document``), the recorded specialist answers to the validation split are split by group, many
times at random: the thresholds are calibrated on half of the groups, then the share of the other
half's queries that the specialist answers wrong *and* is accepted on is measured. The task's budget
is ``1 - quality_target`` (epsilon) at confidence ``1 - delta``; a valid rule exceeds the budget on
held-out groups in at most ``delta`` of the splits. Compared:

- ``rows``: the shipped rule (exact binomial over calibration queries, as if they were exchangeable);
- ``groups``: the same rule certified over groups (Hoeffding-Bentkus over per-group loss shares,
  :func:`routenlp_ray.conformal.calibrator.quality_controlling_threshold` with ``groups``).

    .venv/bin/python benchmarks/grouped_calibration.py --records var/records/embedded --out results/grouped_calibration.json
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
    from routenlp_ray.conformal.calibrator import quality_controlling_threshold
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
        outcome = {"rows": [], "groups": []}
        for _ in range(args.splits):
            cal_groups = set(rng.permutation(names)[: len(names) // 2].tolist())
            cal = np.array([g in cal_groups for g in groups])
            for rule in ("rows", "groups"):
                threshold = quality_controlling_threshold(u[cal], ok[cal], epsilon, args.delta,
                                                          groups=groups[cal].tolist() if rule == "groups" else None)
                accepted = ~cal & ~np.isnan(u) & (u <= (threshold if threshold is not None else -np.inf))
                held = int((~cal).sum())
                bad = float((accepted & ~ok).sum()) / held
                outcome[rule].append({"threshold": threshold, "accepted": float(accepted.sum()) / held,
                                      "accepted_and_wrong": bad, "violated": bad > epsilon})
        summary = {}
        for rule, rows in outcome.items():
            summary[rule] = {
                "violation_rate": float(np.mean([r["violated"] for r in rows])),
                "mean_accepted_and_wrong": float(np.mean([r["accepted_and_wrong"] for r in rows])),
                "p90_accepted_and_wrong": float(np.quantile([r["accepted_and_wrong"] for r in rows], 0.9)),
                "mean_accepted_share": float(np.mean([r["accepted"] for r in rows])),
                "splits_with_no_threshold": int(sum(r["threshold"] is None for r in rows)),
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
