"""A pilot's drift plan: what the week-0 cheap tiers do not know, and from which week traffic shows it.

Real deployments fail in clusters, for a reason: a product launch brings new intents, a new
contract template new clause types, a new team a task no cheap tier serves. A plan names those
parts of the data; the pilot leaves them out of the week-0 specialist and out of traffic until
their week. ::

    name: default
    tasks: [cs_intent, legal_clause, legal_risk, fin_ner, cs_response]
    drifts:
      - {task: cs_intent, label_share: 0.33, from_week: 1}     # a third of the intents are new
      - {task: legal_clause, labels: [Governing Law, Notices], from_week: 2}
      - {task: legal_risk, whole_task: true, from_week: 3}     # a team starts sending it

A plan is checked against the data it runs on (``check``): a label it names must exist in the
task's train split, and a label drift needs a label task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config._base import StrictModel

__all__ = ["DEFAULT_PLAN", "NO_DRIFT_PLAN", "Drift", "DriftPlan", "load_plan"]

PLANS_DIR = Path(__file__).with_name("plans")
DEFAULT_PLAN = PLANS_DIR / "default.yaml"
NO_DRIFT_PLAN = PLANS_DIR / "no-drift.yaml"


class Drift(StrictModel):
    """One part of the data that is new at ``from_week``: some labels of a task, or the whole task."""

    task: str
    labels: list[str] | None = Field(None, min_length=1, description="These labels (reference answers) are new.")
    label_share: float | None = Field(
        None, gt=0, lt=1, description="This share of the task's train labels is new, drawn per pilot seed.")
    whole_task: bool = Field(False, description="The whole task is new: no cheap tier serves it at week 0.")
    from_week: int = Field(ge=0, description="First week whose traffic holds it (0: from the start).")

    @model_validator(mode="after")
    def _one_kind(self) -> "Drift":
        kinds = [self.labels is not None, self.label_share is not None, self.whole_task]
        if sum(kinds) != 1:
            raise ValueError(f"drift of task {self.task!r} must set exactly one of labels, label_share or whole_task")
        return self


class DriftPlan(StrictModel):
    name: str = Field(min_length=1)
    tasks: list[str] = Field(min_length=1, description="Tasks the traffic mixes.")
    mix: dict[str, float] | None = Field(
        None, description="Relative traffic weight per task once it is in traffic; default: equal.")
    drifts: list[Drift] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "DriftPlan":
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks has duplicates: {self.tasks!r}")
        for drift in self.drifts:
            if drift.task not in self.tasks:
                raise ValueError(f"drifts names task {drift.task!r}, which is not in tasks {self.tasks!r}")
        named = [d.task for d in self.drifts]
        if len(set(named)) != len(named):
            raise ValueError(f"drifts names a task more than once: {named!r}")
        if self.mix is not None:
            unknown = sorted(set(self.mix) - set(self.tasks))
            if unknown or any(w <= 0 for w in self.mix.values()):
                raise ValueError(f"mix must give a positive weight to tasks in tasks only, got {self.mix!r}")
        return self

    def drift_of(self, task: str) -> Drift | None:
        return next((d for d in self.drifts if d.task == task), None)

    def weight(self, task: str) -> float:
        return 1.0 if self.mix is None else self.mix.get(task, 1.0)

    def first_week(self, task: str) -> int:
        """The week a task joins the traffic."""
        drift = self.drift_of(task)
        return drift.from_week if drift is not None and drift.whole_task else 0

    def new_labels(self, task: str, train_labels: Iterable[str], seed: int) -> set[str]:
        """The labels of ``task`` the week-0 tiers do not know (drawn per ``seed`` for a label_share)."""
        drift = self.drift_of(task)
        if drift is None or drift.whole_task:
            return set()
        if drift.labels is not None:
            return set(drift.labels)
        labels = sorted(set(train_labels))
        order = np.random.default_rng(seed).permutation(len(labels))
        return {labels[i] for i in order[: max(1, round(len(labels) * float(drift.label_share or 0)))]}

    def visible(self, task: str, label: str, week: int, new_labels: set[str]) -> bool:
        """Whether a row of this task and label is in the traffic of ``week``."""
        if week < self.first_week(task):
            return False
        drift = self.drift_of(task)
        return not (drift is not None and label in new_labels and week < drift.from_week)

    def check(self, task_parsers: Mapping[str, str], train_labels: Mapping[str, set[str]]) -> None:
        """Fail naming the field and value when the plan does not fit the data or the config."""
        unknown = sorted(set(self.tasks) - set(task_parsers))
        if unknown:
            raise ConfigError(f"drift plan {self.name!r}: tasks {unknown} are not tasks of the config with a train "
                              f"split; known: {sorted(task_parsers)}")
        for drift in self.drifts:
            if drift.whole_task:
                continue
            if task_parsers[drift.task] != "label":
                raise ConfigError(f"drift plan {self.name!r}: task {drift.task!r} has parser "
                                  f"{task_parsers[drift.task]!r}; new labels need a label task")
            missing = sorted(set(drift.labels or []) - train_labels[drift.task])
            if missing:
                raise ConfigError(f"drift plan {self.name!r}: drifts[{drift.task}].labels {missing} are not labels "
                                  f"of {drift.task}'s train split")


def load_plan(path: str | Path) -> DriftPlan:
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"drift plan {str(source)!r} cannot be read: {exc}") from None
    try:
        return DriftPlan.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"drift plan {str(source)!r} is invalid: {exc}") from None
