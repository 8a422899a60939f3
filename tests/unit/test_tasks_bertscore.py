"""BERTScore with the packaged all-MiniLM-L6-v2 (loads the model once for this module)."""

from __future__ import annotations

import pytest

from routenlp_ray.tasks import BERTSCORE_LAYER, bertscore_f1, get_bert_scorer, get_task_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _scorer() -> None:
    get_bert_scorer()  # load once; every test below reuses the cached scorer


def test_scorer_is_cached_and_uses_the_last_layer() -> None:
    scorer = get_bert_scorer()
    assert scorer is get_bert_scorer()
    assert scorer.num_layers == BERTSCORE_LAYER == 6


def test_identical_strings_score_one() -> None:
    text = "I have cancelled your order. You will receive a refund within five business days."
    assert bertscore_f1([text], [text])[0] == pytest.approx(1.0, abs=1e-5)


def test_related_beats_unrelated() -> None:
    reference = "I'm sorry your card has not arrived yet. It usually takes up to five working days."
    related = "Sorry that your card is late; delivery normally takes about five business days."
    unrelated = "The annual general meeting approved the dividend of two euros per share."
    related_f1, unrelated_f1 = bertscore_f1([related, unrelated], [reference, reference])
    assert unrelated_f1 < related_f1 < 1.0


def test_empty_prediction_scores_zero() -> None:
    assert bertscore_f1(["", "  "], ["Hello, how can I help?", "Hi"]) == [0.0, 0.0]


def test_cs_response_task_scores_with_bertscore() -> None:
    spec = get_task_spec("cs_response")
    reference = "Thank you for reaching out. I can help you cancel your order right away."
    assert spec.score(reference, reference) == pytest.approx(1.0, abs=1e-5)
    assert spec.is_correct(reference, reference)
    assert not spec.is_correct("Quarterly revenue rose 3 percent.", reference)
    result = spec.evaluate([reference, ""], [reference, reference])
    assert result["bertscore_f1"] == pytest.approx(0.5, abs=1e-5)
