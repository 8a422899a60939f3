"""Quality metrics of the six-task benchmark, per example and over a corpus.

Every metric takes already-parsed predictions (see ``parsers``); an unparseable prediction
(``None`` label, unparsed entity list, empty text) never matches a reference. BERTScore, the one
metric that needs a model, lives in ``bertscore``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from routenlp_ray.tasks.parsers import Entity

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

# Stands in for an unparseable label: never equal to a reference and never a class of its own.
_UNPARSEABLE = "\x00unparseable"
_SPACE_AROUND_PUNCT = re.compile(r"\s*([^\w\s])\s*")
_EDGE_PUNCT = ".,;:!?\"'`"


# ---------------------------------------------------------------------------------------------
# Entity F1 (fin_ner)


def entity_key(entity: Entity) -> tuple[str, str]:
    """The (text, type) pair compared by entity F1.

    Text is case-folded, with whitespace collapsed and dropped around punctuation, and edge
    punctuation stripped: the data is tokenised (``"Inc ."``, ``"Sidney X . Huang"``) while
    models write ``"Inc."`` and ``"Sidney X. Huang"``; both must match.
    """
    text = _SPACE_AROUND_PUNCT.sub(r"\1", " ".join(entity.text.casefold().split()))
    return text.strip(_EDGE_PUNCT).strip(), entity.type.strip().upper()


def _entity_set(entities: Iterable[Entity]) -> set[tuple[str, str]]:
    # A set, not a multiset: answers carry no token positions, so a name repeated in a sentence
    # ("Borrower ... Borrower") is one entity to find, not two.
    return {key for key in map(entity_key, entities) if key[0]}


def entity_f1_example(predicted: Iterable[Entity], reference: Iterable[Entity]) -> float:
    """Entity F1 of one sentence; 1.0 when both sides are empty."""
    pred, gold = _entity_set(predicted), _entity_set(reference)
    if not pred and not gold:
        return 1.0
    return 2 * len(pred & gold) / (len(pred) + len(gold))


def entity_f1(predicted: Sequence[Iterable[Entity]], references: Sequence[Iterable[Entity]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 over a corpus of sentences.

    True positives, predictions and gold entities are summed over sentences before dividing.
    With no entities on either side at all, every score is 1.0.
    """
    _check_lengths(predicted, references)
    tp = n_pred = n_gold = 0
    for pred_entities, gold_entities in zip(predicted, references):
        pred, gold = _entity_set(pred_entities), _entity_set(gold_entities)
        tp += len(pred & gold)
        n_pred += len(pred)
        n_gold += len(gold)
    if n_pred == 0 and n_gold == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * tp / (n_pred + n_gold)
    return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------------------------
# ROUGE-L (fin_summarization)


@lru_cache(maxsize=1)
def _rouge_scorer() -> RougeScorer:
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk; only needed when scoring

    return RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one prediction (``rouge_score``, Porter stemming, whole text as one sequence).

    ``rouge_score`` lower-cases and keeps only letters and digits, so ``$1.01`` is ``1 01``.
    This is sentence-level ROUGE-L (``rougeL``), not the summary-level ``rougeLsum``.
    """
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_rouge_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


def rouge_l_corpus(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean per-example ROUGE-L F1, the usual corpus figure."""
    _check_lengths(predictions, references)
    return sum(map(rouge_l, predictions, references)) / len(predictions)


# ---------------------------------------------------------------------------------------------
# Classification (cs_intent, legal_clause, legal_risk)


def label_match(predicted: str | None, reference: str) -> float:
    """1.0 if the parsed label equals the reference, else 0.0 (``None`` never matches)."""
    return 1.0 if predicted is not None and predicted == reference else 0.0


def classification_scores(predicted: Sequence[str | None], references: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn).

    The classes are the labels present in the references or the predictions, as scikit-learn
    does by default; a class never predicted has F1 0. An unparseable prediction (``None``)
    counts as an error for its true class but adds no class of its own.
    """
    _check_lengths(predicted, references)
    from sklearn.metrics import accuracy_score, f1_score  # scikit-learn is slow to import

    y_pred = [_UNPARSEABLE if label is None else label for label in predicted]
    classes = sorted(set(references) | {label for label in predicted if label is not None})
    return {
        "accuracy": float(accuracy_score(references, y_pred)),
        "macro_f1": float(f1_score(references, y_pred, labels=classes, average="macro", zero_division=0)),
    }


def _check_lengths(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("cannot score an empty corpus")
