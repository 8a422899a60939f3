"""Audits: label a random sample of cheap-tier answers against the last tier's answer.

The sample is drawn before the cascade's decision is known, so accepted and escalated
answers are audited at the same rate: an unbiased view of each cheap tier's answers, which
is what a coverage estimate needs. The last tier's answer is the reference, as it is for
distillation; for an audited query a cheap tier accepted, the router asks the last tier too,
off the response path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from routenlp_ray.cascade import CascadeOutcome
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.monitoring.monitor import LabelledAnswer
from routenlp_ray.tasks.parsers import EntityParse
from routenlp_ray.tasks.spec import TaskSpec


@dataclass
class AuditedAnswer:
    tier: str
    text: str
    uncertainty: float | None


@dataclass
class Audit:
    """Cheap-tier answers to one query and the reference they are judged against."""

    query_id: str
    task: str
    answers: list[AuditedAnswer]
    reference: str | None = None
    reference_tier: str | None = None
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Audit":
        answers = [AuditedAnswer(**a) for a in data.get("answers", [])]
        return cls(**{**data, "answers": answers})


class AuditSampler:
    """Chooses which queries to audit: with probability ``rate``, or a task's raised rate.

    ``raised`` returns the current raised rates by task (the coverage monitor raises a task's
    rate while one of its cells is short of evidence).
    """

    def __init__(self, rate: float, seed: int = 0, raised: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.rate = rate
        self._raised = raised
        self._random = random.Random(seed)

    def rate_for(self, task: str | None) -> float:
        raised = self._raised() if self._raised is not None else {}
        return max(self.rate, raised.get(task, 0.0)) if task is not None else self.rate

    def sample(self, task: str | None = None) -> bool:
        rate = self.rate_for(task)
        return rate > 0 and self._random.random() < rate


def audit_from_outcome(query_id: str, task: str, outcome: CascadeOutcome, last_tier: str) -> Audit | None:
    """The cheap-tier answers of one cascade run; the reference is set if the last tier answered."""
    answers = [
        AuditedAnswer(a.tier, a.text, a.uncertainty)
        for a in outcome.attempts
        if a.tier != last_tier and a.text is not None and a.status in ("accepted", "escalated")
    ]
    if not answers:
        return None
    audit = Audit(query_id=query_id, task=task, answers=answers)
    if outcome.answered_by == last_tier and not outcome.fallback:
        audit.reference, audit.reference_tier = outcome.answer.text, last_tier
    return audit


class AuditLabeller:
    """Scores audited answers with the task's own metric and bar, the reference standing in for gold."""

    def __init__(self, config: RouteNLPConfig) -> None:
        self._tasks: dict[str, TaskSpec] = {t.name: t for t in config.tasks}

    def can_label(self, task: str) -> bool:
        spec = self._tasks.get(task)
        return spec is not None and spec.has_metric

    def label(self, audit: Audit) -> list[LabelledAnswer]:
        if audit.reference is None or not self.can_label(audit.task):
            return []
        spec = self._tasks[audit.task]
        reference = _reference(spec, audit.reference)
        if reference is None:
            return []  # the reference itself is unusable (e.g. no label in it): nothing to judge against
        scores = spec.score_batch([a.text for a in audit.answers], [reference] * len(audit.answers))
        return [
            LabelledAnswer(
                tier=a.tier,
                task=audit.task,
                uncertainty=a.uncertainty,
                correct=score >= spec.success_bar - 1e-9,
                source="audit",
                ts=audit.ts,
                query_id=audit.query_id,
                # The reference is the last tier's own answer, so what accepting this one gives up is 1 - score.
                loss=min(1.0, max(0.0, 1.0 - float(score))),
            )
            for a, score in zip(audit.answers, scores)
        ]


def _reference(spec: TaskSpec, text: str) -> Any:
    parsed = spec.parse(text)
    if isinstance(parsed, EntityParse):
        return text if parsed.parsed else None
    return parsed if parsed else None
