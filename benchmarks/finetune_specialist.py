"""Experiment: fine-tuned label specialists next to today's frozen-encoder heads, per task.

For each label task it fits :class:`~routenlp_ray.specialists.finetuned.FineTunedLabelSpecialist`
(the packaged MiniLM's top layers fine-tuned with transformers ``Trainer`` over a shared frozen
trunk) on the frontier's answers to the train split: the same pairs ``routenlp distill-specialists``
gives the frozen heads (the config's replay frontier). The epoch kept is chosen on the head's seeded
held-out slice of train (10%); validation is read once, at the end, with ``--validation``.
With ``--artifact`` it measures the heads a Ray Train job already fitted (their held-out slice is
rebuilt from the pairs the artifact carries) instead of fitting them here.

Measured per task, in one process: held-out accuracy per epoch, validation accuracy (the task's own
``is_correct``) of both heads, training seconds, artifact size, single-query p50 latency and batched
answers/s (batches of 64) on CPU for both heads, on the held-out texts.

On a shared machine run it under ``nice -n 19``; torch uses ``--threads`` threads::

    ROUTENLP_DATA=/work/shared/data nice -n 19 .venv/bin/python benchmarks/finetune_specialist.py \\
        --tasks cs_intent --epochs 6 --validation --out results/finetune_specialist.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def frontier_train_pairs(config_path: str, data_dir: str, task_name: str) -> tuple[list[str], list[str], object]:
    """The frontier's answers to the task's train split, as ``routenlp distill-specialists`` asks for them."""
    from routenlp_ray.cli import replaying_data_dir
    from routenlp_ray.config import load_config
    from routenlp_ray.engines.factory import make_engine
    from routenlp_ray.loop.teacher import frontier_pairs
    from routenlp_ray.tasks.data import load_examples

    config = replaying_data_dir(load_config(config_path).with_absolute_paths(os.getcwd()), data_dir)
    task = config.task(task_name)
    examples = load_examples(task.data_file(data_dir, "train"))
    pairs, missing = frontier_pairs(make_engine(config.frontier), task, "label", [e.input for e in examples])
    print(f"{task_name}: {len(pairs.texts)} train pairs from the frontier ({missing} without an answer)", flush=True)
    return pairs.texts, pairs.answers, task


def latency(answer_fn, texts: list[str], batch_size: int = 64) -> dict[str, float]:
    """p50 / p90 of single-query calls over ``texts[:200]``, and answers/s over all ``texts`` in batches."""
    answer_fn(texts[:2])  # warm
    singles = []
    for text in texts[:200]:
        started = time.perf_counter()
        answer_fn([text])
        singles.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        answer_fn(texts[start : start + batch_size])
    return {"p50_ms": statistics.median(singles), "p90_ms": sorted(singles)[int(0.9 * len(singles))],
            "batched_answers_per_s": len(texts) / (time.perf_counter() - started), "batch_size": batch_size,
            "n_texts": len(texts)}


def folder_bytes(folder: Path, pairs: bool = False) -> int:
    """Bytes of a head's files; without ``pairs``, leaving out the training pairs it carries for the loop."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and (pairs or p.name != "pairs.jsonl"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cs_intent", "legal_risk", "legal_clause"])
    parser.add_argument("--config", default="serve_config.local.yaml")
    parser.add_argument("--data-dir", default=os.environ.get("ROUTENLP_DATA", "../shared/data"))
    parser.add_argument("--frozen", default="artifacts/specialists/embedded-v3", help="today's artifact, side by side")
    parser.add_argument("--trained-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the fine-tuned layers")
    parser.add_argument("--head-lr", type=float, default=2e-3, help="learning rate of the new classifier")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", action="store_true", help="read the validation split (once, at the end)")
    parser.add_argument("--artifact", default=None,
                        help="measure the fine-tuned heads of this specialist artifact (a Ray Train job's, e.g. "
                             "benchmarks/distill_finetuned_specialists.py) instead of fitting them here")
    parser.add_argument("--save-dir", default="var/finetune", help="each task's fitted head goes to <save-dir>/<task>")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np

    from routenlp_ray.specialists.heads import SpecialistEncoder, load_head
    from routenlp_ray.tasks.data import load_examples

    results: dict = {"command": "python " + " ".join(sys.argv), "tasks": {}}
    if Path(args.out).is_file():  # one task at a time, into one file
        results["tasks"] = json.loads(Path(args.out).read_text()).get("tasks", {})
    for name in args.tasks:
        if args.artifact:
            head, row, held_texts, task = from_artifact(args, name)
        else:
            texts, answers, task = frontier_train_pairs(args.config, args.data_dir, name)
            head, row, held_texts = fit(args, texts, answers, name)
        encoder = SpecialistEncoder(num_threads=args.threads)
        frozen = load_head(Path(args.frozen) / name, encoder)
        frozen_row = {"artifact_bytes": folder_bytes(Path(args.frozen) / name),
                      "latency": latency(lambda t: frozen.answer(t), held_texts)}
        if args.validation:
            rows = load_examples(task.data_file(args.data_dir, "validation"))
            inputs = [r.input for r in rows]
            for out, model in ((row, head), (frozen_row, frozen)):
                out["validation_accuracy"] = float(np.mean(
                    [task.is_correct(p, r.reference) for p, r in zip(model.predict(inputs), rows)]))
            row["n_validation"] = len(rows)
        results["tasks"][name] = {"finetuned": row, "frozen": frozen_row}
        print(json.dumps({name: results["tasks"][name]}, indent=1), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def from_artifact(args: argparse.Namespace, name: str):
    """A Ray-trained head, its training record from the manifest, and its held-out texts (rebuilt from its pairs)."""
    import numpy as np

    from routenlp_ray.config import load_config
    from routenlp_ray.specialists import read_manifest
    from routenlp_ray.specialists.artifact import read_head, read_pairs
    from routenlp_ray.specialists.finetuned import FineTunedLabelSpecialist

    folder = Path(args.artifact) / name
    entry = read_manifest(args.artifact).tasks[name]
    settings = read_head(folder)
    head = FineTunedLabelSpecialist.load(folder, num_threads=args.threads)
    texts, _ = read_pairs(folder)
    holdout, seed = settings["training"]["holdout"], settings["training"]["seed"]
    held = np.random.default_rng(seed).permutation(len(texts))[: int(len(texts) * holdout)]
    held_texts = [texts[i] for i in np.sort(held)]
    row = {
        "artifact": str(folder), "trained_layers": head.trained_layers, **settings["training"],
        "n_fit": len(texts) - len(held), "n_holdout": len(held), "n_classes": len(head.classes_),
        "holdout_accuracy_per_epoch": head.holdout_scores_, "epochs_kept": head.epochs_,
        "train_seconds": entry.metrics.get("train_seconds"), "fit_seconds": entry.metrics.get("fit_seconds"),
        "artifact_bytes": folder_bytes(folder), "artifact_bytes_with_pairs": folder_bytes(folder, pairs=True),
        "latency": latency(head.answer, held_texts),
    }
    task = load_config(args.config).task(name)
    return head, row, held_texts, task


def fit(args: argparse.Namespace, texts: list[str], answers: list[str], name: str):
    from routenlp_ray.specialists.finetuned import FineTunedLabelSpecialist

    head = FineTunedLabelSpecialist(
        trained_layers=args.trained_layers, epochs=args.epochs, learning_rate=args.lr,
        head_learning_rate=args.head_lr, batch_size=args.batch_size, max_length=args.max_length,
        seed=args.seed, num_threads=args.threads,
    ).fit(texts, answers)
    held_texts = [texts[i] for i in head.holdout_index_]
    saved = head.save(Path(args.save_dir) / name)
    row = {
        "trained_layers": args.trained_layers, "max_epochs": args.epochs, "lr": args.lr, "head_lr": args.head_lr,
        "batch_size": args.batch_size, "n_fit": head.n_fit_, "n_holdout": len(held_texts),
        "n_classes": len(head.classes_), "holdout_accuracy_per_epoch": head.holdout_scores_,
        "epochs_kept": head.epochs_, "encode_seconds": head.encode_seconds_, "train_seconds": head.train_seconds_,
        "artifact_bytes": folder_bytes(saved), "latency": latency(head.answer, held_texts),
    }
    print(json.dumps({name: row}), flush=True)
    return head, row, held_texts


if __name__ == "__main__":
    sys.exit(main())
