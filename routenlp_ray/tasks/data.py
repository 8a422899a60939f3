"""Task data: one JSONL row per example, found at ``<data_dir>/<task>/<split>.jsonl``."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import ConfigError
from routenlp_ray._jsonl import iter_jsonl

REQUIRED_FIELDS: tuple[str, ...] = ("id", "task", "input", "reference")


@dataclass(frozen=True)
class Example:
    """One evaluation example.

    ``reference`` is a label string, a free-text answer, or (fin_ner) a list of entity dicts.
    ``extra`` holds every other field of the row (``split``, ``labels``, ``intent``, ...).
    """

    id: str
    task: str
    input: str
    reference: Any
    extra: dict[str, Any] = field(default_factory=dict)


def answer_text(value: Any) -> str:
    """A reference or recorded answer as text: structured ones (entity lists) as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def task_file(data_dir: str | Path, task: str, split: str) -> Path:
    """The path of ``<data_dir>/<task>/<split>.jsonl``; raises ``ConfigError`` naming what is missing."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"data directory {str(root)!r} does not exist (set ROUTENLP_DATA or pass data_dir)")
    folder = root / task
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ConfigError(f"task folder {str(folder)!r} does not exist; folders in {str(root)!r}: {known}")
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        splits = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise ConfigError(f"data file {str(path)!r} does not exist; splits of {task!r}: {splits}")
    return path


def load_examples(path: str | Path, limit: int | None = None, seed: int | None = None) -> list[Example]:
    """Read examples from a JSONL file.

    Without ``seed`` the first ``limit`` rows are returned, in file order. With ``seed`` the rows are
    shuffled by ``random.Random(seed)`` and the first ``limit`` of them returned, so the same seed
    always gives the same sample.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist")
    if seed is None:
        examples: list[Example] = []
        for example in _iter_examples(path):
            if limit is not None and len(examples) >= limit:
                break
            examples.append(example)
        return examples
    # Sampling needs every row, so the whole file is read; the largest task file is a few MB.
    examples = list(_iter_examples(path))
    random.Random(seed).shuffle(examples)
    return examples if limit is None else examples[:limit]


def _iter_examples(path: Path) -> Iterator[Example]:
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise ConfigError(f"{str(path)!r} line {line_no} is a {type(row).__name__}, expected a JSON object")
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise ConfigError(f"{str(path)!r} line {line_no} lacks the fields {missing}")
        extra = {key: value for key, value in row.items() if key not in REQUIRED_FIELDS}
        yield Example(
            id=str(row["id"]),
            task=str(row["task"]),
            input=str(row["input"]),
            reference=row["reference"],
            extra=extra,
        )


def row_groups(spec: Any, data_dir: str | Path, splits: Sequence[str]) -> dict[str, str]:
    """``{example id: group}`` over ``splits`` of a task whose rows carry ``spec.group_field`` ({} if none).

    A split the task has no file for is skipped; a row without the field is a data error, named.
    """
    if spec.group_field is None:
        return {}
    groups: dict[str, str] = {}
    for split in splits:
        try:
            path = spec.data_file(Path(data_dir), split)
        except ConfigError:
            continue
        for example in load_examples(path):
            if spec.group_field not in example.extra:
                raise ValueError(f"task {spec.name!r}: group_field {spec.group_field!r} is not a field of row "
                                 f"{example.id!r} in {path}")
            groups[example.id] = str(example.extra[spec.group_field])
    return groups
