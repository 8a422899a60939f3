"""BIO tags and the JSON entity list the entity tasks answer, shared by the frozen and fine-tuned taggers.

The frontier answers an entity task with a JSON list of ``{"text", "type"}`` objects. A tagger learns
one BIO tag per whitespace word aligned from that list, and answers by reading the spans of its
likeliest tags back into the same JSON, with each word's log-probability as the cascade's evidence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from routenlp_ray.specialists._answer import HeadAnswer

__all__ = ["O_TAG", "align_entities", "entity_answer", "parse_entity_answer", "spans"]

O_TAG = "O"


def align_entities(words: Sequence[str], entities: Sequence[dict[str, Any]]) -> list[str]:
    """BIO tags for ``words`` from an entity list; each entity claims its first free occurrence.

    ``start_token`` is used when it points at the entity's words; otherwise the entity's words
    are searched for. An entity that is nowhere among the words is skipped (the frontier can
    name a normalised form that is not in the text).
    """
    tags = [O_TAG] * len(words)
    for entity in entities:
        parts = str(entity.get("text", "")).split()
        kind = str(entity.get("type", "")).strip().upper()
        if not parts or not kind:
            continue
        width = len(parts)
        hinted = entity.get("start_token")
        candidates = ([hinted] if isinstance(hinted, int) else []) + list(range(len(words) - width + 1))
        for start in candidates:
            if 0 <= start <= len(words) - width and list(words[start : start + width]) == parts and all(
                t == O_TAG for t in tags[start : start + width]
            ):
                tags[start] = f"B-{kind}"
                for i in range(start + 1, start + width):
                    tags[i] = f"I-{kind}"
                break
    return tags


def parse_entity_answer(answer: str) -> list[dict[str, Any]]:
    """The frontier's entity list from its JSON answer; anything else is no entities."""
    try:
        value = json.loads(answer)
    except ValueError:
        return []
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def entity_answer(words: Sequence[str], probs: np.ndarray | None, classes: Sequence[str], top_k: int = 5) -> HeadAnswer:
    """The JSON entity list of each word's likeliest tag, with each word's log-probability as evidence."""
    if not words or probs is None:
        # Nothing to tag, nothing to be unsure about: one certain "token".
        return HeadAnswer("[]", [0.0], [[0.0]])
    best = probs.argmax(axis=1)
    tags = [str(classes[i]) for i in best]
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    chosen = [float(logp[i, j]) for i, j in enumerate(best)]
    top = [[float(x) for x in np.sort(row)[::-1][:top_k]] for row in logp]
    entities = [{"text": " ".join(words[s:e]), "type": kind} for s, e, kind in spans(tags)]
    return HeadAnswer(json.dumps(entities, ensure_ascii=False), chosen, top)


def spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) spans of BIO tags; an I- tag with no open span of its type opens one."""
    spans: list[tuple[int, int, str]] = []
    start, kind = None, None
    for i, tag in enumerate([*tags, O_TAG]):
        prefix, _, tag_kind = tag.partition("-")
        if start is not None and (tag == O_TAG or prefix == "B" or tag_kind != kind):
            spans.append((start, i, str(kind)))
            start, kind = None, None
        if tag != O_TAG and start is None:
            start, kind = i, tag_kind
    return spans
