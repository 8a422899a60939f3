"""What a LoRA student learned before: the pairs its adapter was distilled on, to rehearse.

A LoRA student trained only on the latest failures forgets the tasks they leave out (the targeted
student of the 2-seed loop experiment lost fin_ner). Mixing a share of its earlier distillation
data into every set keeps it, at the same budget. An adapter's earlier data, first match wins:

1. ``examples.jsonl`` in the adapter folder: every adapter a loop iteration writes carries the
   pairs of its whole lineage (its parent's plus its own);
2. ``student.json``, written by ``routenlp distill-student``: the seeded rows of the split it was
   distilled from are read again, and the frontier is asked for its answers on them (a replay
   frontier answers from its records, a hosted one is paid again once).

An adapter with neither has nothing to rehearse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXAMPLES_FILE = "examples.jsonl"
STUDENT_FILE = "student.json"


def earlier_pairs(adapter: str | Path | None, config: Any, teacher: Any = None) -> list[dict[str, str]]:
    """The (task, input, answer) pairs ``adapter`` was distilled on; [] for the bare model or an unknown adapter.

    ``config`` is the :class:`RouteNLPConfig` (task prompts, and the frontier when the pairs must be
    asked for again); ``teacher`` the frontier's engine, built from it if needed.
    """
    if adapter is None:
        return []
    folder = Path(adapter)
    if (folder / EXAMPLES_FILE).is_file():
        return [json.loads(line) for line in (folder / EXAMPLES_FILE).read_text().splitlines() if line.strip()]
    if not (folder / STUDENT_FILE).is_file():
        return []
    from routenlp_ray.loop.teacher import frontier_answers
    from routenlp_ray.tasks.data import load_examples

    recipe = json.loads((folder / STUDENT_FILE).read_text())
    if teacher is None:
        from routenlp_ray.engines.factory import make_engine

        teacher = make_engine(config.frontier)
    data_dir = Path(recipe["data_dir"])
    if not data_dir.is_absolute():
        # distill-student records the --data-dir it was given, relative to where it ran: the project root.
        data_dir = Path(__file__).resolve().parents[2] / data_dir
    out: list[dict[str, str]] = []
    for task, counts in recipe["tasks"].items():
        spec = config.task(task)
        rows = load_examples(spec.data_file(data_dir, recipe["split"]), limit=counts["train"] + counts["held_out"],
                             seed=recipe["seed"])
        # distill-student held out the first rows of each task's sample; the rest is what it trained on.
        texts, answers, _ = frontier_answers(teacher, spec, [r.input for r in rows[counts["held_out"]:]])
        out += [{"task": task, "input": t, "answer": a} for t, a in zip(texts, answers)]
    return out


def write_lineage(adapter_dir: str | Path, earlier: Sequence[Mapping[str, Any]],
                  new: Sequence[Mapping[str, Any]]) -> Path:
    """Record in a new adapter the pairs of its whole lineage, for the next iteration to rehearse."""
    path = Path(adapter_dir) / EXAMPLES_FILE
    seen: set[tuple[str, str]] = set()
    lines = []
    for pair in [*earlier, *new]:
        key = (str(pair["task"]), str(pair["input"]))
        if key in seen:
            continue
        seen.add(key)
        lines.append(json.dumps({"task": pair["task"], "input": pair["input"], "answer": pair["answer"]},
                                ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n")
    return path
