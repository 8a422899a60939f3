"""Distil the label tasks into fine-tuned specialists in one Ray Train job; carry the other heads over.

The pairs are the frontier's answers to each task's train split, read in the order
``routenlp distill-specialists --split train --seed 0`` reads them; each label task gets a
``finetuned_label`` head (:mod:`routenlp_ray.specialists.finetuned`) whose epoch is chosen on its
own 10% held-out slice of those pairs. Heads of the tasks not named (fin_ner, cs_response) join
the new artifact unchanged from ``--carry-from``. Starts Ray: run it inside the machine's Ray lock::

    flock /work/ray.lock nice -n 19 .venv/bin/python benchmarks/distill_finetuned_specialists.py \\
        --epochs cs_intent=6 legal_risk=4 legal_clause=5 --out artifacts/specialists/embedded-v4
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
    parser.add_argument("--epochs", nargs="+", required=True, help="TASK=N: the label tasks and their most epochs")
    parser.add_argument("--trained-layers", type=int, default=2)
    parser.add_argument("--carry-from", default="artifacts/specialists/embedded-v3")
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default="var/ray_train")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from routenlp_ray.cli import replaying_data_dir
    from routenlp_ray.config import load_config
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.teacher import frontier_pairs
    from routenlp_ray.specialists import FineTuneSettings, SpecialistTrainingConfig, distill_specialists, read_manifest
    from routenlp_ray.tasks.data import load_examples

    epochs = {item.split("=")[0]: int(item.split("=")[1]) for item in args.epochs}
    config = replaying_data_dir(load_config(args.config).with_absolute_paths(os.getcwd()), args.data_dir)
    teacher = make_engine(config.frontier)
    pairs = {}
    for name in epochs:
        task = config.task(name)
        examples = load_examples(task.data_file(args.data_dir, "train"), seed=args.seed)
        pairs[name], missing = frontier_pairs(teacher, task, "label", [e.input for e in examples])
        print(f"{name}: {len(pairs[name].texts)} pairs from {config.frontier.name!r} ({missing} without an answer)",
              flush=True)
    training = SpecialistTrainingConfig(
        finetune={t: FineTuneSettings(trained_layers=args.trained_layers, epochs=n) for t, n in epochs.items()},
        cpus_per_worker=args.cpus, seed=args.seed,
    )
    started = time.perf_counter()
    out = distill_specialists(pairs, args.out, version=Path(args.out).name, config=training,
                              storage_path=args.storage, carry_from=args.carry_from)
    manifest = read_manifest(out)
    print(json.dumps({"artifact": str(out), "wall_seconds": time.perf_counter() - started,
                      "tasks": {t: e.metrics for t, e in manifest.tasks.items() if t in epochs}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
