"""The labelled rows a threshold table was fitted on, shipped beside it.

A threshold is only as good as the evidence behind it. Shipping that evidence (one JSON line
per cheap-tier answer: tier, task, uncertainty, whether it met the task's bar) lets the live
monitor recalibrate on a full window from day one: until live audits fill
``monitoring.recalibration_window`` for a (tier, task), these rows fill the rest, so a
recalibration never rests on a few dozen audits alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from routenlp_ray._exceptions import ArtifactError


@dataclass(frozen=True)
class CalibrationRow:
    """One cheap-tier answer of the calibration set; ``uncertainty`` is None when it could not be scored."""

    tier: str
    task: str
    uncertainty: float | None
    correct: bool
    id: str | None = None
    # The quality accepting it gives up against the last tier's answer, in [0, 1] (graded metrics);
    # None: 1 when wrong (see ``ConformalCalibrator.conformalize``).
    loss: float | None = None


def save_calibration_rows(path: str | os.PathLike[str], rows: Iterable[CalibrationRow]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as handle:
        for row in rows:
            u = row.uncertainty
            u = None if u is None or math.isnan(u) or math.isinf(u) else round(float(u), 6)
            record = {"id": row.id, "tier": row.tier, "task": row.task, "uncertainty": u, "correct": bool(row.correct)}
            if row.loss is not None and not math.isnan(row.loss):
                record["loss"] = round(float(row.loss), 6)
            handle.write(json.dumps(record) + "\n")
    return target


def load_calibration_rows(path: str | os.PathLike[str]) -> list[CalibrationRow]:
    """Read a rows file; a missing file or a bad line raises ``ArtifactError`` naming the line."""
    file = Path(path)
    if not file.is_file():
        raise ArtifactError(f"calibration rows not found: {str(file)!r}")
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            u = data["uncertainty"]
            rows.append(CalibrationRow(
                tier=str(data["tier"]), task=str(data["task"]), uncertainty=None if u is None else float(u),
                correct=bool(data["correct"]), id=data.get("id"),
                loss=None if data.get("loss") is None else float(data["loss"]),
            ))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"calibration rows {str(file)!r} line {number} is invalid: {exc!r}") from None
    return rows
