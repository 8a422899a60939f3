"""Metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from routenlp_ray.tasks import (
    Entity,
    classification_scores,
    entity_f1,
    entity_f1_example,
    get_task_spec,
    label_match,
    rouge_l,
    rouge_l_corpus,
)

A, B, C, D = Entity("Acme Corp", "ORG"), Entity("Jane Doe", "PER"), Entity("London", "LOC"), Entity("Bob", "PER")


def test_entity_f1_partial_overlap() -> None:
    # 2 predicted, 3 gold, 1 match: P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 0.4.
    scores = entity_f1([[A, D]], [[A, B, C]])
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(0.4)
    assert entity_f1_example([A, D], [A, B, C]) == pytest.approx(0.4)


def test_entity_f1_is_micro_averaged() -> None:
    # Sentence 1: 1 of 1 right; sentence 2: 0 of 2 predicted right, 3 gold.
    # Totals: tp = 1, predicted = 3, gold = 4 -> P = 1/3, R = 1/4, F1 = 2/7.
    scores = entity_f1([[A], [C, D]], [[A], [B, Entity("Paris", "LOC"), Entity("Zed", "MISC")]])
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx(2 / 7)


def test_entity_f1_empty_prediction() -> None:
    assert entity_f1_example([], []) == 1.0
    assert entity_f1_example([], [A]) == 0.0
    assert entity_f1_example([A], []) == 0.0
    assert entity_f1([[]], [[A, B]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert entity_f1([[], []], [[], []])["f1"] == 1.0


def test_entity_matching_ignores_case_spacing_and_tokenisation() -> None:
    gold = [Entity("Sidney X . Huang", "PER"), Entity("Acme  Holdings Inc .", "ORG")]
    pred = [Entity("sidney x. huang", "per"), Entity("ACME Holdings Inc.", "ORG")]
    assert entity_f1_example(pred, gold) == 1.0
    # The type still has to match.
    assert entity_f1_example([Entity("Jane Doe", "ORG")], [B]) == 0.0


def test_repeated_mentions_count_once() -> None:
    # Gold lists "Borrower" twice (two positions); an answer naming it once is complete.
    borrower = Entity("Borrower", "PER")
    assert entity_f1_example([borrower], [borrower, borrower]) == 1.0


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat on the mat", "the cat lay on the red mat") = "the cat on the mat" = 5 tokens.
    # P = 5/7, R = 5/6, F1 = 2PR/(P+R) = 10/13.
    assert rouge_l("the cat lay on the red mat", "the cat sat on the mat") == pytest.approx(10 / 13)
    assert rouge_l("The cat sat on the mat.", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("", "the cat sat on the mat") == 0.0
    assert rouge_l_corpus(["the cat lay on the red mat", "xyz"], ["the cat sat on the mat", "abc"]) == pytest.approx(
        5 / 13
    )


def test_macro_f1_hand_computed() -> None:
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", None, "c"]
    # a: P = 2/2, R = 2/3 -> F1 0.8; b: P = 1/2, R = 1/2 -> 0.5; c: 1.0. Macro = 2.3 / 3.
    # The unparseable prediction (None) is a miss for "b" and adds no class.
    scores = classification_scores(pred, gold)
    assert scores["macro_f1"] == pytest.approx(2.3 / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)


def test_a_class_only_predicted_counts_in_macro_f1() -> None:
    # Classes a, b (gold) and z (predicted only): F1 a = 2/3, b = 1, z = 0 -> macro = 5/9.
    scores = classification_scores(["a", "z", "b"], ["a", "a", "b"])
    assert scores["macro_f1"] == pytest.approx(5 / 9)


def test_none_never_matches() -> None:
    assert label_match(None, "fair") == 0.0
    assert label_match("fair", "fair") == 1.0
    assert classification_scores([None, None], ["fair", "fair"]) == {"accuracy": 0.0, "macro_f1": 0.0}


def test_metric_inputs_must_line_up() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        classification_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        entity_f1([], [])


def test_task_scores_unparseable_output_as_wrong() -> None:
    ner = get_task_spec("fin_ner")
    # Even when the sentence has no entities, prose instead of a list is wrong per example.
    assert ner.score("I could not find any entities.", []) == 0.0
    assert ner.score("[]", []) == 1.0
    assert ner.score('[{"text": "Acme Corp", "type": "ORG"}]', [{"text": "Acme Corp", "type": "ORG"}]) == 1.0
    result = ner.evaluate(["gibberish", "[]"], [[{"text": "Acme Corp", "type": "ORG"}], []])
    assert result["f1"] == 0.0 and result["unparseable_rate"] == 0.5

    intent = get_task_spec("cs_intent")
    assert intent.score("no idea", "card_arrival") == 0.0
    assert intent.score("Card arrival", "card_arrival") == 1.0


def test_is_correct_uses_the_bar() -> None:
    ner = get_task_spec("fin_ner")
    gold = [{"text": t, "type": "PER"} for t in "ABCDE"]
    four_of_five = (
        '[{"text": "A", "type": "PER"}, {"text": "B", "type": "PER"}, {"text": "C", "type": "PER"}, '
        '{"text": "D", "type": "PER"}]'
    )
    # F1 = 2*4/(4+5) = 0.889 >= 0.8; three of five gives 2*3/8 = 0.75 < 0.8.
    assert ner.is_correct(four_of_five, gold)
    assert not ner.is_correct(
        '[{"text": "A", "type": "PER"}, {"text": "B", "type": "PER"}, {"text": "C", "type": "PER"}]', gold
    )
    risk = get_task_spec("legal_risk")
    assert risk.is_correct("Clearly unfair.", "clearly_unfair")
    assert not risk.is_correct("potentially_unfair", "clearly_unfair")
    summary = get_task_spec("fin_summarization")
    assert summary.is_correct("the cat lay on the red mat", "the cat sat on the mat")  # 0.77 >= 0.3
    assert not summary.is_correct("revenue rose", "the cat sat on the mat")
