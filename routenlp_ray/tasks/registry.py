"""The six built-in tasks of the RouteNLP benchmark, and specs for tasks defined in config.

Success bars (the per-example score at or above which an answer counts as correct, used to label
calibration data for the conformal cascade):

- ``cs_intent``, ``legal_clause``, ``legal_risk``: exact label match (bar 1.0).
- ``fin_ner``: sentence-level entity F1 >= 0.8. Most sentences hold one to three entities, so
  this asks for every entity when there are few and allows one slip in five or more.
- ``fin_summarization``: ROUGE-L F1 >= 0.3. On the validation data a summary of a *different*
  call scores a median 0.15 (7.6% reach 0.3, the references share a formulaic style), while
  picking the best-matching transcript sentence per reference bullet scores a median 0.36 (76%
  reach 0.3); 0.3 separates the two.
- ``cs_response``: BERTScore F1 >= 0.6, not the 0.85 usual for RoBERTa-large. With
  all-MiniLM-L6-v2 (last layer, no rescaling) another reference of the *same* intent scores a
  median 0.65 (25th percentile 0.59) and only 0.5% of them reach 0.85, while references of
  *different* intents score a median 0.42 (95th percentile 0.59). 0.6 passes about three in
  four same-intent answers and about one in twenty off-topic ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config.tasks import TaskConfig
from routenlp_ray.tasks.labels import CS_INTENT_LABELS, FIN_NER_TYPES, LEGAL_CLAUSE_LABELS, LEGAL_RISK_LABELS
from routenlp_ray.tasks.parsers import ParserKind
from routenlp_ray.tasks.spec import PARSER_FOR_METRIC, TaskSpec

__all__ = ["BUILTIN_TASKS", "TaskSpec", "get_task_spec", "task_spec_from_config"]

_BUILTINS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="fin_ner",
        description="Financial named-entity recognition (PER, ORG, LOC, MISC).",
        system_prompt=(
            'Extract the named entities from the sentence. Answer with a JSON list of objects with keys "text" '
            'and "type", where type is one of PER, ORG, LOC, MISC. Answer [] if there are none.'
        ),
        parser="entities",
        metric="entity_f1",
        success_bar=0.8,
        entity_types=FIN_NER_TYPES,
        data_folder="fin_ner",
    ),
    TaskSpec(
        name="fin_summarization",
        description="Earnings-call summarisation into short bullet points.",
        system_prompt="Summarise the earnings-call excerpt in at most three short bullet points with the key figures.",
        parser="text",
        metric="rouge_l",
        success_bar=0.3,
        data_folder="fin_summarization",
    ),
    TaskSpec(
        name="cs_intent",
        description="Banking customer-service intent (BANKING77 labels).",
        system_prompt="Classify the banking customer's message. Answer with the intent label only, in snake_case.",
        parser="label",
        metric="macro_f1",
        success_bar=1.0,
        labels=CS_INTENT_LABELS,
        data_folder="cs_intent",
    ),
    TaskSpec(
        name="cs_response",
        description="Customer-service response generation.",
        system_prompt="You are a helpful customer-support agent. Reply to the customer politely and concisely.",
        parser="text",
        metric="bertscore",
        success_bar=0.6,
        data_folder="cs_response",
    ),
    TaskSpec(
        name="legal_clause",
        description="Contract clause type (CUAD categories).",
        system_prompt="Name the CUAD category of this contract clause. Answer with the category name only.",
        parser="label",
        metric="macro_f1",
        success_bar=1.0,
        labels=LEGAL_CLAUSE_LABELS,
        data_folder="legal_clause",
    ),
    TaskSpec(
        name="legal_risk",
        description="Unfairness of a terms-of-service sentence.",
        system_prompt=(
            "Rate how unfair this terms-of-service sentence is for the consumer. Answer with one word: "
            "fair, potentially_unfair or clearly_unfair."
        ),
        parser="label",
        metric="accuracy",
        success_bar=1.0,
        labels=LEGAL_RISK_LABELS,
        data_folder="legal_risk",
    ),
)

BUILTIN_TASKS: Mapping[str, TaskSpec] = MappingProxyType({spec.name: spec for spec in _BUILTINS})


def get_task_spec(name: str) -> TaskSpec:
    """The built-in task called ``name``; raises ``ConfigError`` listing the built-ins otherwise."""
    try:
        return BUILTIN_TASKS[name]
    except KeyError:
        raise ConfigError(f"no built-in task {name!r}; built-in tasks: {sorted(BUILTIN_TASKS)}") from None


def task_spec_from_config(
    config: TaskConfig,
    *,
    labels: Sequence[str] | None = None,
    entity_types: Sequence[str] | None = None,
) -> TaskSpec:
    """The spec of a task declared in config.

    A config naming a built-in task keeps the built-in's parser, label set and data folder, and
    the built-in's prompts and success bar for every field the config leaves unset. Any other
    task is parsed as its metric needs (``label`` for macro_f1/accuracy, ``entities`` for
    entity_f1, ``text`` otherwise), with ``labels`` / ``entity_types`` if given, and its data in
    ``config.data_path`` (relative to the data directory, or absolute), by default ``<name>/``.
    """
    explicit = config.model_fields_set
    builtin = BUILTIN_TASKS.get(config.name)
    if builtin is not None and builtin.metric != config.metric:
        # Same name, different metric: only the name is shared, so nothing else is inherited.
        builtin = None

    def inherited(field: str) -> Any:
        if builtin is not None and field not in explicit:
            return getattr(builtin, field)
        return getattr(config, field)

    parser: ParserKind = builtin.parser if builtin is not None else PARSER_FOR_METRIC[config.metric][0]
    try:
        return TaskSpec(
            name=config.name,
            description=inherited("description"),
            system_prompt=inherited("system_prompt"),
            prompt_template=inherited("prompt_template"),
            parser=parser,
            metric=config.metric,
            success_bar=inherited("success_bar"),
            quality_target=config.quality_target,
            labels=tuple(labels) if labels is not None else (builtin.labels if builtin else None),
            entity_types=(
                tuple(entity_types) if entity_types is not None else (builtin.entity_types if builtin else None)
            ),
            data_folder=config.data_path or (builtin.data_folder if builtin else config.name),
        )
    except ValueError as exc:
        raise ConfigError(f"task {config.name!r} cannot be built: {exc}") from exc
