"""Which tasks the student tier should serve, decided on train rows it was not distilled on.

For each task: the student's share of right answers on a seeded sample of the train split minus
its training and held-out examples, and what the quality rule (the shipped rule, at the half
budget a second cheap tier gets) would let it accept there.

    .venv/bin/python benchmarks/student_tasks_on_train.py --records var/records/student-train
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from routenlp_ray.config import load_config
from routenlp_ray.conformal.calibrator import quality_controlling_threshold
from routenlp_ray.conformal.selection import TaskScores
from routenlp_ray.recording.tables import build_table
from routenlp_ray.tasks.data import load_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="serve_config.local.yaml")
    parser.add_argument("--records", required=True)
    parser.add_argument("--student", default="artifacts/students/smollm2-v1")
    parser.add_argument("--data-dir", default=os.environ.get("ROUTENLP_DATA", "../shared/data"))
    parser.add_argument("--delta", type=float, default=0.1)
    args = parser.parse_args()
    config = load_config(args.config).with_absolute_paths(os.getcwd())
    tier = config.tier("smollm2")
    only = config.model_copy(update={"tiers": [tier, config.frontier]})
    provenance = json.loads((Path(args.student) / "student.json").read_text())
    scores = TaskScores(config.cascade)
    for task, counts in provenance["tasks"].items():
        spec = config.task(task)
        used = {e.id for e in load_examples(spec.data_file(args.data_dir, "train"),
                                             limit=counts["train"] + counts["held_out"], seed=provenance["seed"])}
        table = build_table(only, Path(args.records), Path(args.data_dir), task, "train", scores.for_task(task))
        keep = np.array([i not in used for i in table.ids])
        u, ok = table.uncertainty[keep, 0], table.correct[keep, 0] > 0
        threshold = quality_controlling_threshold(u, ok, (1 - spec.quality_target) / 2, args.delta / 2)
        accepted = 0.0 if threshold is None else float(np.mean(u <= threshold))
        print(f"{task:<14} rows {int(keep.sum()):>3}  right {ok.mean():6.1%}  quality rule at half budget: "
              f"{'no threshold' if threshold is None else f'accepts {accepted:.1%}'}")


if __name__ == "__main__":
    main()
