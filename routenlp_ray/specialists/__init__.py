"""Distilled task specialists: cheap tiers that are right on routine queries.

Heads (label classifier with word n-gram features, entity tagger, answer cache) share one frozen encoder, label
tasks may fine-tune the encoder's top layers over a shared trunk instead, and all are distilled from the frontier's answers in a Ray Train job into a versioned, checksummed artifact.
"""

from routenlp_ray.specialists.artifact import SpecialistManifest, read_manifest, verify_artifact
from routenlp_ray.specialists.finetuned import FineTunedLabelSpecialist
from routenlp_ray.specialists.heads import (
    AnswerCache,
    EntitySpecialist,
    HeadAnswer,
    LabelSpecialist,
    SpecialistEncoder,
    align_entities,
    load_head,
)
from routenlp_ray.specialists.lexical import LexicalFeatures
from routenlp_ray.specialists.training import (
    FineTuneSettings,
    SpecialistTrainingConfig,
    TaskPairs,
    distill_specialists,
    fit_heads,
)

__all__ = [
    "AnswerCache",
    "EntitySpecialist",
    "FineTuneSettings",
    "FineTunedLabelSpecialist",
    "HeadAnswer",
    "LabelSpecialist",
    "LexicalFeatures",
    "SpecialistEncoder",
    "SpecialistManifest",
    "SpecialistTrainingConfig",
    "TaskPairs",
    "align_entities",
    "distill_specialists",
    "fit_heads",
    "load_head",
    "read_manifest",
    "verify_artifact",
]
