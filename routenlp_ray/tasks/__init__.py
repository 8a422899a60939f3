"""Task layer: prompts, output parsers, quality metrics and data loading for the benchmark tasks.

``TaskSpec`` is the one task type: a serve config's ``tasks[]`` entry is one, and
``get_task_spec("fin_ner")`` (or ``TaskSpec(name="fin_ner")``) gives a built-in task. A spec renders prompts, parses model text, scores one answer
(``score`` / ``is_correct``) and evaluates a corpus (``evaluate``).
"""

from routenlp_ray.tasks.bertscore import BERTSCORE_LAYER, BERTSCORE_MODEL, bertscore_f1, get_bert_scorer
from routenlp_ray.tasks.data import Example, load_examples, task_file
from routenlp_ray.tasks.labels import CS_INTENT_LABELS, FIN_NER_TYPES, LEGAL_CLAUSE_LABELS, LEGAL_RISK_LABELS
from routenlp_ray.tasks.metrics import (
    classification_scores,
    entity_f1,
    entity_f1_example,
    label_match,
    rouge_l,
    rouge_l_corpus,
)
from routenlp_ray.tasks.parsers import (
    Entity,
    EntityParse,
    ParserKind,
    normalise_label,
    parse_entities,
    parse_label,
    parse_text,
)
from routenlp_ray.tasks.registry import BUILTIN_TASKS, get_task_spec
from routenlp_ray.tasks.spec import TaskSpec

__all__ = [
    "BERTSCORE_LAYER",
    "BERTSCORE_MODEL",
    "BUILTIN_TASKS",
    "CS_INTENT_LABELS",
    "Entity",
    "EntityParse",
    "Example",
    "FIN_NER_TYPES",
    "LEGAL_CLAUSE_LABELS",
    "LEGAL_RISK_LABELS",
    "ParserKind",
    "TaskSpec",
    "bertscore_f1",
    "classification_scores",
    "entity_f1",
    "entity_f1_example",
    "get_bert_scorer",
    "get_task_spec",
    "label_match",
    "load_examples",
    "normalise_label",
    "parse_entities",
    "parse_label",
    "parse_text",
    "rouge_l",
    "rouge_l_corpus",
    "task_file",
]
