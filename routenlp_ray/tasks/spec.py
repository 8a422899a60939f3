"""``TaskSpec``, the one task type: how a task is prompted, parsed and scored, and the quality it keeps.

The same model is a serve config's ``tasks[]`` entry and what the recorder, the calibrator, the
monitor and the loop score with. A task with a built-in name (``tasks/builtins.py``) takes the
built-in's values for every field it leaves unset, so a config names only what it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.tasks import metrics
from routenlp_ray.tasks.builtins import BUILTIN_DEFAULTS
from routenlp_ray.tasks.data import answer_text
from routenlp_ray.tasks.parsers import (
    Entity,
    EntityParse,
    ParserKind,
    entities_from_value,
    label_index,
    normalise_label,
    parse_entities,
    parse_free_label,
    parse_label,
    parse_text,
)

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"

MetricName = Literal["entity_f1", "rouge_l", "macro_f1", "accuracy", "bertscore", "exact_match", "none"]

# The parser each metric needs; a spec naming another combination fails at construction.
PARSER_FOR_METRIC: dict[str, tuple[ParserKind, ...]] = {
    "entity_f1": ("entities",),
    "rouge_l": ("text",),
    "bertscore": ("text",),
    "macro_f1": ("label",),
    "accuracy": ("label",),
    "exact_match": ("text", "label"),
    "none": ("text", "label", "entities"),
}

# The key of ``TaskSpec.evaluate`` that is the task's headline number.
PRIMARY_KEY: dict[str, str] = {
    "entity_f1": "f1",
    "rouge_l": "rouge_l",
    "bertscore": "bertscore_f1",
    "macro_f1": "macro_f1",
    "accuracy": "accuracy",
    "exact_match": "exact_match",
}

# Scores such as 2*4/(5+5) can land a hair under a bar of 0.8 in floating point.
_BAR_TOLERANCE = 1e-9


def check_prompt_template(value: str) -> str:
    """A user-message template must hold exactly the ``{input}`` slot and be a valid format string."""
    if "{input}" not in value:
        raise ValueError(f"prompt_template must contain '{{input}}', got {value!r}")
    try:
        value.format(input="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"prompt_template {value!r} is not a valid format string: {exc}") from exc
    return value


class TaskSpec(BaseModel):
    """One task served behind ``model="routenlp/<name>"``: prompt, parser, metric, bar and data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TASK_NAME_PATTERN, description="Task name; clients pick it via `model`.")
    description: str = Field("", description="One line shown in /v1/models and reports.")
    system_prompt: str | None = Field(None, description="System message sent before the user's input.")
    prompt_template: str = Field(
        "{input}", description="User message template; `{input}` is replaced by the client's last user message."
    )
    metric: MetricName = Field("none", description="Quality metric; `none` means the task is never scored.")
    parser: ParserKind = Field(
        "text", description="How model text is read: `label`, `entities` or `text`; by default what the metric needs."
    )
    success_bar: float = Field(
        1.0, ge=0, le=1, description="Per-example score at or above which an answer counts as correct."
    )
    quality_target: float = Field(
        0.96, gt=0, le=1, description="Share of frontier quality this task must keep (quality retention)."
    )
    labels: tuple[str, ...] | None = Field(None, description="Label set of a `label` task; None = free labels.")
    entity_types: tuple[str, ...] | None = Field(None, description="Entity types of an `entities` task.")
    data_path: str | None = Field(
        None, description="Folder with <split>.jsonl: relative to the data directory, or absolute; default <name>/."
    )
    group_field: str | None = Field(
        None,
        description="Field of the data rows that ties queries together (the contract a clause comes from): "
                    "`routenlp calibrate --groups` certifies the quality rule over these groups, so its promise "
                    "holds for queries from groups it never saw, not only for rows like the calibration rows.",
    )

    @model_validator(mode="before")
    @classmethod
    def _builtin_defaults(cls, data: Any) -> Any:
        """Fill what a config leaves unset from the built-in task of that name, and the parser from the metric.

        A task that reuses a built-in name with another metric shares only the name.
        """
        if not isinstance(data, dict):
            return data
        builtin = BUILTIN_DEFAULTS.get(data.get("name"))  # type: ignore[arg-type]
        if builtin is not None and data.get("metric", builtin["metric"]) == builtin["metric"]:
            data = {**builtin, **data}
        if "parser" not in data and data.get("metric", "none") in PARSER_FOR_METRIC:
            data = {**data, "parser": PARSER_FOR_METRIC[data.get("metric", "none")][0]}
        return data

    @field_validator("prompt_template")
    @classmethod
    def _has_input_slot(cls, value: str) -> str:
        return check_prompt_template(value)

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("labels must not be empty; use None for a task without a fixed label set")
            label_index(value)  # raises when two labels normalise alike
        return value

    @model_validator(mode="after")
    def _parser_fits_metric(self) -> TaskSpec:
        allowed = PARSER_FOR_METRIC[self.metric]
        if self.parser not in allowed:
            raise ValueError(f"metric {self.metric!r} needs parser {' or '.join(allowed)}, got {self.parser!r}")
        return self

    # -- prompting ---------------------------------------------------------------------------

    def render_user_message(self, text: str) -> str:
        return self.prompt_template.format(input=text)

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat messages for one input: the system prompt (if any), then the rendered user turn."""
        return self.apply_to_messages([{"role": "user", "content": text}])

    def apply_to_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Template the last user message and put the task's system prompt first."""
        out = list(messages)
        last_user = max(i for i, m in enumerate(out) if m["role"] == "user")
        out[last_user] = {"role": "user", "content": self.render_user_message(out[last_user]["content"])}
        if self.system_prompt:
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out

    # -- data --------------------------------------------------------------------------------

    def data_file(self, data_dir: str | Path, split: str) -> Path:
        """``<data_path>/<split>.jsonl``; a relative ``data_path`` (default: the task's name) is under ``data_dir``."""
        from routenlp_ray.tasks.data import task_file

        folder = Path(self.data_path or self.name)
        if folder.is_absolute():
            return task_file(folder.parent, folder.name, split)
        return task_file(data_dir, str(folder), split)

    # -- scoring -----------------------------------------------------------------------------

    @property
    def has_metric(self) -> bool:
        return self.metric != "none"

    @property
    def primary_metric(self) -> str:
        """The key of ``evaluate``'s result that is this task's headline number."""
        self._require_metric()
        return PRIMARY_KEY[self.metric]

    def parse(self, prediction_text: str | None) -> str | None | EntityParse:
        """The parsed answer: a label (or None), an ``EntityParse``, or stripped text."""
        if self.parser == "label":
            return self._parse_label(prediction_text)
        if self.parser == "entities":
            return parse_entities(prediction_text, self.entity_types)
        return parse_text(prediction_text)

    def score(self, prediction_text: str | None, reference: Any) -> float:
        """The per-example metric of one answer, in [0, 1]; unparseable answers score 0."""
        return self.score_batch([prediction_text], [reference])[0]

    def score_batch(self, predictions: Sequence[str | None], references: Sequence[Any]) -> list[float]:
        """Per-example metric of many answers at once (BERTScore batches them through the model)."""
        self._require_metric()
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
        if self.metric == "bertscore":
            from routenlp_ray.tasks.bertscore import bertscore_f1  # loads torch on first use

            return bertscore_f1([parse_text(p) for p in predictions], [self._reference_text(r) for r in references])
        return [self._score_one(p, r) for p, r in zip(predictions, references)]

    def is_correct(self, prediction_text: str | None, reference: Any) -> bool:
        """Whether one answer meets the task's bar: ``score >= success_bar``."""
        return self.score(prediction_text, reference) >= self.success_bar - _BAR_TOLERANCE

    def evaluate(self, predictions: Sequence[str | None], references: Sequence[Any]) -> dict[str, float]:
        """Corpus metrics of model answers against references.

        Keys by metric: ``entity_f1`` -> precision, recall, f1, unparseable_rate;
        ``macro_f1`` / ``accuracy`` -> accuracy, macro_f1, unparseable_rate; ``rouge_l`` -> rouge_l;
        ``bertscore`` -> bertscore_f1; ``exact_match`` -> exact_match. ``primary_metric`` names the
        headline key. For entity F1 an unparseable answer counts as predicting no entities (all its
        gold entities are missed); per example (``score``) it scores 0 even if the gold list is empty.
        """
        self._require_metric()
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
        if not predictions:
            raise ValueError("cannot evaluate an empty set of predictions")
        if self.metric == "entity_f1":
            parses = [self._parse_entities(p) for p in predictions]
            result = metrics.entity_f1([p.entities for p in parses], [self._reference_entities(r) for r in references])
            return {**result, "unparseable_rate": sum(not p.parsed for p in parses) / len(parses)}
        if self.metric in ("macro_f1", "accuracy"):
            labels = [self._parse_label(p) for p in predictions]
            result = metrics.classification_scores(labels, [self._reference_label(r) for r in references])
            return {**result, "unparseable_rate": sum(label is None for label in labels) / len(labels)}
        if self.metric == "rouge_l":
            texts = [parse_text(p) for p in predictions]
            return {"rouge_l": metrics.rouge_l_corpus(texts, [self._reference_text(r) for r in references])}
        scores = self.score_batch(predictions, references)
        return {PRIMARY_KEY[self.metric]: sum(scores) / len(scores)}

    # -- internals ---------------------------------------------------------------------------

    def _require_metric(self) -> None:
        if not self.has_metric:
            raise ConfigError(f"task {self.name!r} has metric 'none', so its answers cannot be scored")

    def _score_one(self, prediction_text: str | None, reference: Any) -> float:
        if self.metric == "entity_f1":
            parsed = self._parse_entities(prediction_text)
            if not parsed.parsed:
                return 0.0
            return metrics.entity_f1_example(parsed.entities, self._reference_entities(reference))
        if self.metric == "rouge_l":
            return metrics.rouge_l(parse_text(prediction_text), self._reference_text(reference))
        if self.parser == "label":
            return metrics.label_match(self._parse_label(prediction_text), self._reference_label(reference))
        # exact_match on free text: equal up to case and whitespace.
        predicted = " ".join(parse_text(prediction_text).casefold().split())
        return 1.0 if predicted and predicted == " ".join(self._reference_text(reference).casefold().split()) else 0.0

    def _parse_label(self, prediction_text: str | None) -> str | None:
        if self.labels is None:
            return parse_free_label(prediction_text)
        return parse_label(prediction_text, self.labels)

    def _parse_entities(self, prediction_text: str | None) -> EntityParse:
        return parse_entities(prediction_text, self.entity_types)

    def _reference_label(self, reference: Any) -> str:
        text = str(reference)
        if self.labels is None:
            return normalise_label(text)
        # References are canonical labels already; mapping by normalised form also accepts
        # "card arrival" for "card_arrival". Labels outside the set stay as they are (never matched).
        return label_index(self.labels).by_form.get(normalise_label(text), text)

    def _reference_entities(self, reference: Any) -> tuple[Entity, ...]:
        if isinstance(reference, str):
            parsed = parse_entities(reference, self.entity_types)
            if parsed.parsed:
                return parsed.entities
        else:
            entities = entities_from_value(reference, self.entity_types)
            if entities is not None:
                return entities
        raise ValueError(f"task {self.name!r}: reference is not an entity list: {reference!r}")

    @staticmethod
    def _reference_text(reference: Any) -> str:
        # Structured references are compared as the JSON the replay tier would answer with.
        return answer_text(reference)
