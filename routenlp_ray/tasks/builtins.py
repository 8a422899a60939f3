"""The defaults of the six built-in tasks of the RouteNLP benchmark.

``TaskSpec(name="fin_ner")`` is the built-in task: a task declared with a built-in name (and
the same metric, or none given) takes these values for every field it leaves unset. They live
here, as plain data, so that ``spec`` can fill them in without importing the registry.

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

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from routenlp_ray.tasks.labels import CS_INTENT_LABELS, FIN_NER_TYPES, LEGAL_CLAUSE_LABELS, LEGAL_RISK_LABELS

BUILTIN_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "fin_ner": {
        "description": "Financial named-entity recognition (PER, ORG, LOC, MISC).",
        "system_prompt": (
            'Extract the named entities from the sentence. Answer with a JSON list of objects with keys "text" '
            'and "type", where type is one of PER, ORG, LOC, MISC. Answer [] if there are none.'
        ),
        "metric": "entity_f1",
        "success_bar": 0.8,
        "entity_types": FIN_NER_TYPES,
    },
    "fin_summarization": {
        "description": "Earnings-call summarisation into short bullet points.",
        "system_prompt": "Summarise the earnings-call excerpt in at most three short bullet points with the key figures.",
        "metric": "rouge_l",
        "success_bar": 0.3,
    },
    "cs_intent": {
        "description": "Banking customer-service intent (BANKING77 labels).",
        "system_prompt": "Classify the banking customer's message. Answer with the intent label only, in snake_case.",
        "metric": "macro_f1",
        "success_bar": 1.0,
        "labels": CS_INTENT_LABELS,
    },
    "cs_response": {
        "description": "Customer-service response generation.",
        "system_prompt": "You are a helpful customer-support agent. Reply to the customer politely and concisely.",
        "metric": "bertscore",
        "success_bar": 0.6,
    },
    "legal_clause": {
        "description": "Contract clause type (CUAD categories).",
        "system_prompt": "Name the CUAD category of this contract clause. Answer with the category name only.",
        "metric": "macro_f1",
        "success_bar": 1.0,
        "labels": LEGAL_CLAUSE_LABELS,
        "group_field": "contract",
    },
    "legal_risk": {
        "description": "Unfairness of a terms-of-service sentence.",
        "system_prompt": (
            "Rate how unfair this terms-of-service sentence is for the consumer. Answer with one word: "
            "fair, potentially_unfair or clearly_unfair."
        ),
        "metric": "accuracy",
        "success_bar": 1.0,
        "labels": LEGAL_RISK_LABELS,
        "group_field": "document",
    },
})
