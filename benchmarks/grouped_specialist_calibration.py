"""Calibrate a specialist on groups held out from its training, and test the promise on unseen groups.

The train split's groups (legal_clause: contracts) are split with a seed: the specialist is
distilled (a fine-tuned head, one Ray Train job) on the frontier's answers for ``1 - --calibration-share``
of them, and its answers on the held-out groups are the calibration rows. The thresholds, row-level
(the shipped rule) and grouped (certified per group), are then read on the validation split, whose
groups are in neither. The promise: the share of validation queries answered wrong *and* accepted
stays within ``1 - quality_target``. Starts Ray: run it inside the machine's Ray lock::

    flock /work/ray.lock nice -n 19 .venv/bin/python benchmarks/grouped_specialist_calibration.py \\
        --task legal_clause --epochs 5 --out results/grouped_calibration_legal_clause.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_config.local.yaml")
    parser.add_argument("--data-dir", default=os.environ.get("ROUTENLP_DATA", "../shared/data"))
    parser.add_argument("--task", default="legal_clause")
    parser.add_argument("--calibration-share", type=float, default=1 / 3, help="share of train groups held out")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--trained-layers", type=int, default=2)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default="var/ray_train")
    parser.add_argument("--artifact", default=None, help="default: var/grouped/<task>-s<seed>")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np

    from routenlp_ray.cli import replaying_data_dir
    from routenlp_ray.config import load_config
    from routenlp_ray.conformal.calibrator import quality_controlling_threshold
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.teacher import frontier_answers
    from routenlp_ray.specialists import (
        FineTuneSettings,
        SpecialistTrainingConfig,
        TaskPairs,
        distill_specialists,
        read_manifest,
    )
    from routenlp_ray.specialists.finetuned import FineTunedLabelSpecialist
    from routenlp_ray.tasks.data import task_file

    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    task = config.task(args.task)
    field = task.group_field
    if field is None:
        raise SystemExit(f"task {args.task!r} has no group_field: nothing to hold out by group")
    rows = {split: [json.loads(line) for line in open(task_file(args.data_dir, args.task, split))]
            for split in ("train", "validation")}
    names = sorted({r[field] for r in rows["train"]})
    held_groups = set(np.random.default_rng(args.seed).permutation(names)[: round(len(names) * args.calibration_share)])
    fit_rows = [r for r in rows["train"] if r[field] not in held_groups]
    cal_rows = [r for r in rows["train"] if r[field] in held_groups]
    teacher = make_engine(config.frontier)
    texts, answers, missing = frontier_answers(teacher, task, [r["input"] for r in fit_rows])
    folder = Path(args.artifact or f"var/grouped/{args.task}-s{args.seed}")
    started = time.perf_counter()
    if not folder.exists():
        training = SpecialistTrainingConfig(
            finetune={args.task: FineTuneSettings(trained_layers=args.trained_layers, epochs=args.epochs)},
            cpus_per_worker=args.cpus, seed=args.seed)
        distill_specialists({args.task: TaskPairs(kind="label", texts=texts, answers=answers)}, folder,
                            folder.name, training, storage_path=args.storage)
    train_seconds = time.perf_counter() - started
    head = FineTunedLabelSpecialist.load(folder / args.task, num_threads=int(args.cpus))

    def answered(split_rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The frontier's answer is what "right" means here, as in the recorded tables.
        _, truth, missing = frontier_answers(teacher, task, [r["input"] for r in split_rows])
        if missing:
            raise SystemExit(f"the frontier has no answer to {missing} of the {len(split_rows)} rows")
        found = head.answer([r["input"] for r in split_rows], top_k=1)
        u = np.array([-a.token_logprobs[0] for a in found])
        ok = np.array([task.is_correct(a.text, t) for a, t in zip(found, truth)])
        return u, ok, np.array([r[field] for r in split_rows])

    cal_u, cal_ok, cal_g = answered(cal_rows)
    val_u, val_ok, val_g = answered(rows["validation"])
    epsilon = 1 - task.quality_target
    result = {
        "command": "python " + " ".join(sys.argv), "task": args.task, "group_field": field, "epsilon": epsilon,
        "delta": args.delta, "artifact": str(folder), "train_seconds": train_seconds,
        "train_groups": len(names) - len(held_groups), "train_rows": len(texts), "without_answer": missing,
        "calibration_groups": len(held_groups), "calibration_rows": len(cal_rows),
        "calibration_accuracy": float(cal_ok.mean()),
        "validation_groups": len(set(val_g)), "validation_rows": len(val_u),
        "validation_accuracy": float(val_ok.mean()),
        "holdout_scores": read_manifest(folder).tasks[args.task].metrics,
        "rules": {},
    }
    for rule in ("rows", "groups"):
        threshold = quality_controlling_threshold(cal_u, cal_ok, epsilon, args.delta,
                                                  groups=cal_g.tolist() if rule == "groups" else None)
        accepted = val_u <= (threshold if threshold is not None else -np.inf)
        per_group = [float((accepted & ~val_ok)[val_g == g].mean()) for g in sorted(set(val_g))]
        result["rules"][rule] = {
            "threshold": threshold,
            "validation_accepted_share": float(accepted.mean()),
            "validation_accepted_and_wrong": float((accepted & ~val_ok).mean()),
            "validation_accepted_and_wrong_mean_over_groups": float(np.mean(per_group)),
            "validation_error_among_accepted": float((~val_ok[accepted]).mean()) if accepted.any() else None,
            "within_budget": bool((accepted & ~val_ok).mean() <= epsilon),
        }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
