"""Output parsers: labels, entity lists and free text from what models actually write."""

from __future__ import annotations

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.tasks import (
    CS_INTENT_LABELS,
    FIN_NER_TYPES,
    LEGAL_CLAUSE_LABELS,
    LEGAL_RISK_LABELS,
    Entity,
    normalise_label,
    parse_entities,
    parse_label,
    parse_text,
)
from routenlp_ray.tasks.parsers import label_index


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card_arrival", "card_arrival"),
        ("Card Arrival.", "card_arrival"),
        ("  CARD-ARRIVAL  ", "card_arrival"),
        ('"card_arrival"', "card_arrival"),
        ("cardarrival", "card_arrival"),
        ("```\ncard_arrival\n```", "card_arrival"),
        ("The intent is: `card_payment_wrong_exchange_rate`.", "card_payment_wrong_exchange_rate"),
        # The first label mentioned wins.
        ("Intent: lost_or_stolen_card (maybe card_not_working)", None),  # hedging between labels is ambiguous
        ("I am not sure what the customer wants.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_intent_label(text: str | None, expected: str | None) -> None:
    assert parse_label(text, CS_INTENT_LABELS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Potentially unfair", "potentially_unfair"),
        ("clearly_unfair.", "clearly_unfair"),
        ("FAIR", "fair"),
        # Word boundaries: "unfair" is not "fair", and on its own names no level.
        ("unfair", None),
        ("The sentence is potentially unfair to the consumer.", "potentially_unfair"),
    ],
)
def test_parse_risk_label(text: str, expected: str | None) -> None:
    assert parse_label(text, LEGAL_RISK_LABELS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rofr/rofo/rofn", "Rofr/Rofo/Rofn"),
        ("Affiliate License - Licensee", "Affiliate License-Licensee"),
        ("affiliate_license_licensor", "Affiliate License-Licensor"),
        ("Category: Non-Compete", "Non-Compete"),
        ("unlimited all you can eat license", "Unlimited/All-You-Can-Eat-License"),
    ],
)
def test_parse_clause_label(text: str, expected: str) -> None:
    assert parse_label(text, LEGAL_CLAUSE_LABELS) == expected


def test_longer_label_wins_at_the_same_position() -> None:
    assert parse_label("card payment fee charged", ["card_payment", "card_payment_fee_charged"]) == (
        "card_payment_fee_charged"
    )


def test_normalise_label() -> None:
    assert normalise_label("Unlimited/All-You-Can-Eat-License") == "unlimited all you can eat license"
    assert normalise_label("top_up_limits") == normalise_label("Top Up  Limits!") == "top up limits"


def test_labels_that_normalise_alike_are_rejected() -> None:
    with pytest.raises(ConfigError, match="cannot be told apart"):
        label_index(("card_arrival", "Card Arrival"))


def test_built_in_label_sets_are_distinct_once_normalised() -> None:
    for labels in (CS_INTENT_LABELS, LEGAL_CLAUSE_LABELS, LEGAL_RISK_LABELS):
        assert len(label_index(labels).by_form) == len(labels)


@pytest.mark.parametrize(
    "text",
    [
        '[{"text": "Silicon Valley Bank", "type": "ORG"}, {"text": "John Smith", "type": "PER"}]',
        (
            'Sure! Here are the entities:\n```json\n[{"text": "Silicon Valley Bank", "type": "ORG"},\n'
            ' {"text": "John Smith", "type": "PER"}]\n```\nLet me know if you need more.'
        ),
        "[{'text': 'Silicon Valley Bank', 'type': 'organization'}, {'text': 'John Smith', 'type': 'person'}]",
        '{"entities": [["Silicon Valley Bank", "ORG"], ["John Smith", "B-PER"]]}',
        '{"ORG": ["Silicon Valley Bank"], "PER": ["John Smith"], "LOC": []}',
        "ORG: Silicon Valley Bank\n- PER: John Smith",
        # Cut off by max_tokens: the complete objects still count.
        '[{"text": "Silicon Valley Bank", "type": "ORG"}, {"text": "John Smith", "type": "PER"}, {"text": "Cal',
    ],
)
def test_parse_entities_formats(text: str) -> None:
    parsed = parse_entities(text, FIN_NER_TYPES)
    assert parsed.parsed
    assert set(parsed.entities) == {Entity("Silicon Valley Bank", "ORG"), Entity("John Smith", "PER")}


def test_empty_entity_list_is_parsed() -> None:
    parsed = parse_entities("[]", FIN_NER_TYPES)
    assert parsed.parsed and parsed.entities == ()
    assert parse_entities("There are none: []", FIN_NER_TYPES).parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        None,
        "There are no named entities in this sentence.",
        "Note: the sentence is boilerplate.",
        '["Silicon Valley Bank", "John Smith"]',
    ],
)
def test_unparseable_entities_are_flagged(text: str | None) -> None:
    parsed = parse_entities(text, FIN_NER_TYPES)
    assert not parsed.parsed
    assert parsed.entities == ()


def test_parse_text_strips() -> None:
    assert parse_text("  Hello there.\n") == "Hello there."
    assert parse_text(None) == ""


def test_an_answer_echoing_several_labels_is_ambiguous() -> None:
    from routenlp_ray.tasks.labels import LEGAL_RISK_LABELS

    assert parse_label("Fair, potentially_unfair, potentially_unfair", LEGAL_RISK_LABELS) is None
    assert parse_label("The sentence is potentially unfair.", LEGAL_RISK_LABELS) == "potentially_unfair"
    assert parse_label("fair. fair!", LEGAL_RISK_LABELS) == "fair"
