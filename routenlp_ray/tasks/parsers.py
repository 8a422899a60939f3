"""Parsers that turn a model's free text into what a task's metric compares.

Small models rarely answer in the exact format asked for, so every parser is lenient about
wrapping (prose, code fences, quotes, case) and strict about content: an answer that names no
known label, or holds no entity list, is *unparseable* and scores as wrong.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from routenlp_ray._exceptions import ConfigError

ParserKind = Literal["label", "entities", "text"]

_SEPARATORS = re.compile(r"[\W_]+")
_CODE_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.DOTALL)
_OPENING = re.compile(r"[\[{]")

# ---------------------------------------------------------------------------------------------
# Labels


def normalise_label(text: str) -> str:
    """Case-fold and turn every run of punctuation, underscores or spaces into one space.

    ``"Card_Arrival"``, ``"card arrival"`` and ``"card-arrival."`` all become ``"card arrival"``.
    """
    return " ".join(_SEPARATORS.split(text.casefold())).strip()


@dataclass(frozen=True)
class LabelIndex:
    """Normalised forms of a label set, built once per set (see ``label_index``)."""

    labels: tuple[str, ...]
    by_form: dict[str, str]
    by_compact: dict[str, str]
    # Longest first, so at equal start positions the longer label wins ("card payment fee charged"
    # over a hypothetical "card payment").
    search_order: tuple[tuple[str, str], ...]


@lru_cache(maxsize=64)
def label_index(labels: tuple[str, ...]) -> LabelIndex:
    """Index ``labels``; raises ``ConfigError`` if two labels normalise to the same form."""
    by_form: dict[str, str] = {}
    by_compact: dict[str, str] = {}
    for label in labels:
        form = normalise_label(label)
        if not form:
            raise ConfigError(f"label {label!r} has no letters or digits")
        if form in by_form and by_form[form] != label:
            raise ConfigError(f"labels {by_form[form]!r} and {label!r} cannot be told apart once normalised")
        by_form[form] = label
        # A compact form that collides is only dropped: it is a convenience, the spaced form decides.
        compact = form.replace(" ", "")
        if compact in by_compact and by_compact[compact] != label:
            by_compact[compact] = ""
        else:
            by_compact[compact] = label
    order = tuple(sorted(by_form.items(), key=lambda item: -len(item[0])))
    return LabelIndex(labels=labels, by_form=by_form, by_compact=by_compact, search_order=order)


def parse_label(text: str | None, labels: Sequence[str]) -> str | None:
    """The label of ``labels`` that ``text`` answers with, or ``None`` when it names none.

    The whole answer is matched first (case, spacing, punctuation and snake_case ignored); failing
    that, an answer that mentions exactly one label parses as it, so ``"The intent is:
    card_arrival."`` parses as ``card_arrival``. An answer naming several different labels
    (``"fair, potentially_unfair, clearly_unfair"``: a small model echoing the options) is
    ambiguous and parses as ``None``. Labels are matched on word boundaries, longest first, so
    ``"potentially unfair"`` never also counts as ``fair``.
    """
    if not text:
        return None
    index = label_index(tuple(labels))
    form = normalise_label(_strip_code_fences(text))
    if not form:
        return None
    if form in index.by_form:
        return index.by_form[form]
    compact = index.by_compact.get(form.replace(" ", ""))
    if compact:
        return compact
    padded = f" {form} "
    taken: list[tuple[int, int]] = []
    mentioned: set[str] = set()
    for label_form, label in index.search_order:
        needle = f" {label_form} "
        position = padded.find(needle)
        while position >= 0:
            span = (position + 1, position + len(needle) - 1)
            if not any(start < span[1] and span[0] < end for start, end in taken):
                taken.append(span)
                mentioned.add(label)
            position = padded.find(needle, position + 1)
    return next(iter(mentioned)) if len(mentioned) == 1 else None


def parse_free_label(text: str | None) -> str | None:
    """A label for a task without a fixed label set: the normalised answer, ``None`` if empty."""
    if not text:
        return None
    return normalise_label(_strip_code_fences(text)) or None


# ---------------------------------------------------------------------------------------------
# Entities

# Common spellings of the fin_ner types; applied only when the target is one of the task's types.
TYPE_ALIASES: dict[str, str] = {
    "PERSON": "PER",
    "PEOPLE": "PER",
    "ORGANIZATION": "ORG",
    "ORGANISATION": "ORG",
    "COMPANY": "ORG",
    "LOCATION": "LOC",
    "GPE": "LOC",
    "MISCELLANEOUS": "MISC",
}
_TEXT_KEYS = ("text", "entity", "name", "span", "value", "word")
_TYPE_KEYS = ("type", "label", "entity_type", "category", "tag")
_TYPE_LINE = re.compile(r"^\s*(?:[-*•]\s*|\d+[.)]\s*)?[*_`\"']*([A-Za-z][A-Za-z_-]{0,31})[*_`\"']*\s*:\s*(.+?)\s*$")
_EMPTY_TEXTS = frozenset({"", "none", "n/a", "-", "[]", "null"})


@dataclass(frozen=True)
class Entity:
    """One named entity as a model states it: surface text and type, without a position."""

    text: str
    type: str


@dataclass(frozen=True)
class EntityParse:
    """Entities read from a model's answer. ``parsed`` is False when nothing could be read at all."""

    entities: tuple[Entity, ...]
    parsed: bool


def canonical_type(raw: str, types: Sequence[str] | None = None) -> str:
    """Upper-case ``raw``, drop an IOB prefix (``B-PER``) and map aliases (``PERSON`` -> ``PER``)."""
    value = raw.strip().upper().replace(" ", "_")
    if len(value) > 2 and value[1] == "-" and value[0] in "BIES":
        value = value[2:]
    alias = TYPE_ALIASES.get(value)
    if alias is not None and (types is None or alias in types):
        return alias
    return value


def parse_entities(text: str | None, types: Sequence[str] | None = None) -> EntityParse:
    """Read entities from a model's answer.

    Accepted, in order: a JSON (or Python-literal) list of ``{"text", "type"}`` objects, a
    ``{"entities": [...]}`` object or a ``{"TYPE": ["text", ...]}`` object, anywhere in the answer
    (inside code fences or prose); then ``TYPE: text`` lines. ``types`` limits the line fallback to
    known types (so ``Note: ...`` is not an entity) and scopes the type aliases.
    Anything else gives ``EntityParse((), parsed=False)``.
    """
    if not text or not text.strip():
        return EntityParse((), parsed=False)
    for candidate in _candidates(text):
        # Loose objects are collected rather than returned at once: a list cut off by max_tokens
        # still holds complete objects, and some models write one object per line.
        loose: list[Entity] = []
        for value in _embedded_values(candidate):
            single = _entity_from_item(value, types) if isinstance(value, dict) else None
            if single is not None:
                loose.append(single)
                continue
            entities = entities_from_value(value, types)
            if entities is not None:
                return EntityParse(entities, parsed=True)
        if loose:
            return EntityParse(tuple(loose), parsed=True)
    lines = tuple(_entities_from_lines(text, types))
    if lines:
        return EntityParse(lines, parsed=True)
    return EntityParse((), parsed=False)


def entities_from_value(value: Any, types: Sequence[str] | None = None) -> tuple[Entity, ...] | None:
    """Entities from decoded JSON, or ``None`` if ``value`` is not an entity structure.

    Also used for references, which are lists of ``{"text", "type", "start_token", "end_token"}``.
    """
    if isinstance(value, dict):
        if "entities" in value:
            return entities_from_value(value["entities"], types)
        single = _entity_from_item(value, types)
        if single is not None:
            return (single,)
        return _entities_by_type(value, types)
    if not isinstance(value, list):
        return None
    entities = [entity for entity in (_entity_from_item(item, types) for item in value) if entity is not None]
    # A non-empty list with no entity-shaped item (e.g. a list of bare names) is not an answer.
    if value and not entities:
        return None
    return tuple(entities)


def _entity_from_item(item: Any, types: Sequence[str] | None) -> Entity | None:
    if isinstance(item, dict):
        lowered = {str(k).lower(): v for k, v in item.items()}
        text = next((lowered[k] for k in _TEXT_KEYS if k in lowered), None)
        kind = next((lowered[k] for k in _TYPE_KEYS if k in lowered), None)
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        text, kind = item
    else:
        return None
    if not isinstance(text, str) or not isinstance(kind, str) or not text.strip() or not kind.strip():
        return None
    return Entity(text=text.strip(), type=canonical_type(kind, types))


def _entities_by_type(value: dict[Any, Any], types: Sequence[str] | None) -> tuple[Entity, ...] | None:
    """``{"PER": ["Jane Doe"], "ORG": []}``: every key must be a known type."""
    entities: list[Entity] = []
    for key, texts in value.items():
        if not isinstance(key, str) or not _is_type(canonical_type(key, types), types):
            return None
        items = [texts] if isinstance(texts, str) else texts
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            return None
        entities.extend(Entity(t.strip(), canonical_type(key, types)) for t in items if t.strip())
    return tuple(entities) if value else None


def _is_type(value: str, types: Sequence[str] | None) -> bool:
    # Without a type list, only upper-case tags count, so "Note" or "Answer" are not types.
    return value in types if types is not None else value.isupper()


def _entities_from_lines(text: str, types: Sequence[str] | None) -> Iterator[Entity]:
    for line in text.splitlines():
        match = _TYPE_LINE.match(line)
        if match is None:
            continue
        raw_type, raw_text = match.groups()
        if types is None and not raw_type.isupper():
            continue
        kind = canonical_type(raw_type, types)
        if not _is_type(kind, types):
            continue
        value = raw_text.strip().strip("\"'`*,;").strip()
        if value.casefold() not in _EMPTY_TEXTS:
            yield Entity(value, kind)


def _candidates(text: str) -> Iterable[str]:
    """Code-fenced blocks first (the model's own framing of its answer), then the whole text."""
    yield from (block for block in _CODE_FENCE.findall(text) if block.strip())
    yield text


def _embedded_values(text: str) -> Iterator[Any]:
    """Each JSON or Python-literal list/object in ``text``, left to right, outermost first.

    After a value decodes, scanning resumes past it, so its nested brackets are not yielded again.
    """
    decoder = json.JSONDecoder()
    position = 0
    while True:
        match = _OPENING.search(text, position)
        if match is None:
            return
        start = match.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value, end = _literal_at(text, start)
        if end is None:
            position = start + 1
            continue
        yield value
        position = end


def _literal_at(text: str, start: int) -> tuple[Any, int | None]:
    """Small models often answer with single quotes: try the span up to the last closing bracket."""
    end = text.rfind("]" if text[start] == "[" else "}")
    if end <= start:
        return None, None
    try:
        return ast.literal_eval(text[start : end + 1]), end + 1
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, None


# ---------------------------------------------------------------------------------------------
# Free text


def parse_text(text: str | None) -> str:
    """A free-text answer: the text without surrounding whitespace (``""`` for ``None``)."""
    return (text or "").strip()


def _strip_code_fences(text: str) -> str:
    blocks = [block for block in _CODE_FENCE.findall(text) if block.strip()]
    return blocks[0] if blocks else text
