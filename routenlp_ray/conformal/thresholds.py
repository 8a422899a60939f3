"""Versioned per-(tier, task) acceptance thresholds, as written by calibration and read by the router."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, ValidationError, field_validator

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.config._base import StrictModel

if TYPE_CHECKING:
    from routenlp_ray.config.cascade import CascadeConfig


class ThresholdTable(StrictModel):
    """``thresholds[tier][task]`` is delta: an answer with uncertainty <= delta is accepted."""

    version: str = Field(description="Version label; logged with every decision made under it.")
    created_at: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(), description="ISO-8601 creation time."
    )
    alpha: float | None = Field(None, gt=0, lt=1, description="Miscoverage the thresholds were calibrated for.")
    score: str | None = Field(None, description="Uncertainty score the thresholds apply to.")
    thresholds: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="tier -> task -> delta; null means the tier never accepts that task."
    )

    @field_validator("thresholds")
    @classmethod
    def _finite_or_none(cls, value: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
        for tier, per_task in value.items():
            for task, delta in per_task.items():
                if delta is not None and math.isnan(delta):
                    raise ValueError(f"thresholds[{tier!r}][{task!r}] is NaN")
        return value

    def get(self, tier: str, task: str) -> float | None:
        return self.thresholds.get(tier, {}).get(task)

    def has(self, tier: str, task: str) -> bool:
        return task in self.thresholds.get(tier, {})

    def resolve(self, tier: str, task: str, default: float | None) -> float | None:
        """The threshold in force: the table's value (None = never accepts) or ``default`` if it has none."""
        return self.get(tier, task) if self.has(tier, task) else default

    def merged(self, overrides: dict[str, dict[str, float]], version: str | None = None) -> "ThresholdTable":
        merged = {tier: dict(per_task) for tier, per_task in self.thresholds.items()}
        for tier, per_task in overrides.items():
            merged.setdefault(tier, {}).update(per_task)
        return self.model_copy(update={"thresholds": merged, "version": version or self.version})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(self.model_dump_json(indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ThresholdTable":
        file = Path(path)
        try:
            return cls.model_validate(json.loads(file.read_text()))
        except FileNotFoundError:
            raise ArtifactError(f"threshold artifact not found: {str(file)!r}") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ArtifactError(f"threshold artifact {str(file)!r} is invalid: {exc}") from None


def load_thresholds(cascade: "CascadeConfig") -> ThresholdTable:
    """The cascade's artifact (if any) with its inline thresholds layered on top."""
    base = (
        ThresholdTable.load(cascade.thresholds_path)
        if cascade.thresholds_path
        else ThresholdTable(version="none", alpha=cascade.alpha, score=cascade.uncertainty)
    )
    if not cascade.thresholds:
        return base
    digest = hashlib.sha1(json.dumps(cascade.thresholds, sort_keys=True).encode()).hexdigest()[:8]
    return base.merged(cascade.thresholds, version=f"{base.version}+inline-{digest}")
