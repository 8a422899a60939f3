"""Per-task validation quality of a transformers tier with and without its student adapter.

Both record folders must hold the tier's answers to the same validation rows (``routenlp record
--limit 300 --seed 0``, once with the adapter and once with a config that has none). Writes a
JSON and a Markdown table: the share of answers that meet the task's bar and the mean metric.

    .venv/bin/python benchmarks/student_vs_base.py --student var/records/embedded --base var/records/base \
        --out results/student_vs_base.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from routenlp_ray.config import load_config
from routenlp_ray.recording.tables import build_table

TASKS = ["cs_intent", "legal_clause", "legal_risk", "fin_ner", "cs_response"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="serve_config.local.yaml")
    parser.add_argument("--tier", default="smollm2")
    parser.add_argument("--student", required=True, help="records folder of the tier with its adapter")
    parser.add_argument("--base", required=True, help="records folder of the tier without it")
    parser.add_argument("--data-dir", default=os.environ.get("ROUTENLP_DATA", "../shared/data"))
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    config = load_config(args.config).with_absolute_paths(os.getcwd())
    # Only the one tier is read: a config with just it (and the frontier the tables need last).
    tier = config.tier(args.tier).model_copy(update={"tasks": None})  # compared on every task, served or not
    only = config.model_copy(update={"tiers": [tier, config.frontier]})
    rows = []
    for task in TASKS:
        tables = {name: build_table(only, Path(folder), Path(args.data_dir), task, args.split)
                  for name, folder in (("base", args.base), ("student", args.student))}
        common = sorted(set(tables["base"].ids) & set(tables["student"].ids))
        row = {"task": task, "n": len(common)}
        for name, table in tables.items():
            index = {i: k for k, i in enumerate(table.ids)}
            picked = [index[i] for i in common]
            row[f"{name}_right"] = float(np.mean(table.correct[picked, 0]))
            row[f"{name}_metric"] = float(np.mean(table.quality[picked, 0]))
        rows.append(row)
    Path(args.out).write_text(json.dumps({"tier": args.tier, "split": args.split, "tasks": rows}, indent=2))
    lines = [
        f"| task | rows | {args.tier} base: right / mean metric | with the student adapter: right / mean metric |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['n']} | {r['base_right']:.1%} / {r['base_metric']:.3f} | "
                     f"**{r['student_right']:.1%}** / {r['student_metric']:.3f} |")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
