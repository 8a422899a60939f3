"""Command-line options derived from a pydantic model's fields, so a flag and its config field cannot drift.

The flag's type, ``nargs``, choices, default and help come from the field (its annotation, its
default and its ``Field(description=...)``); a command reads the values back with
:meth:`ModelOptions.values` and hands them to the model::

    PILOT = ModelOptions(PilotSettings, ["weeks", "queries_per_week"], flags={"queries_per_week": "--queries"})
    PILOT.add_to(parser)                      # --weeks 6, --queries 500, with the fields' descriptions
    PilotSettings(**PILOT.values(args), ...)

Fields of these types become options: ``int``, ``float``, ``str``, a ``Literal`` of them,
``list[...]`` of any of those (``nargs="+"``), and any of these ``| None``.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_SCALARS = (int, float, str)


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def field_argument(model: type[BaseModel], name: str, *, overrides: bool = False) -> dict[str, Any]:
    """``add_argument`` keyword arguments for the field ``name`` of ``model``.

    With ``overrides``, the default is None: the option, when given, overrides a value that
    comes from elsewhere (a settings file); the field's own default stays the model's business.
    """
    info: FieldInfo | None = model.model_fields.get(name)
    if info is None:
        raise KeyError(f"{model.__name__} has no field {name!r}")
    annotation = _without_none(info.annotation)
    kwargs: dict[str, Any] = {}
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
        kwargs["nargs"] = "+"
    if get_origin(annotation) is Literal:
        choices = list(get_args(annotation))
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or not kinds <= set(_SCALARS):
            raise TypeError(f"{model.__name__}.{name}: no option for a Literal of {sorted(k.__name__ for k in kinds)}")
        kwargs["choices"] = choices
        annotation = kinds.pop()
    if annotation not in _SCALARS:
        raise TypeError(f"{model.__name__}.{name}: no option for a field of type {info.annotation!r}")
    if annotation is not str:  # argparse reads strings anyway
        kwargs["type"] = annotation
    if overrides:
        kwargs["default"] = None
    elif info.is_required():
        kwargs["required"] = True
    else:
        kwargs["default"] = info.get_default(call_default_factory=True)
    if info.description:
        kwargs["help"] = info.description.replace("%", "%%")  # argparse formats help with %
    return kwargs


@dataclass(frozen=True)
class ModelOptions:
    """Options for some of ``model``'s fields: ``--field-name`` unless ``flags`` names another.

    ``extra`` adds or replaces ``add_argument`` keyword arguments of one field's option (a
    narrower ``choices``, say). With ``overrides``, every default is None, and :meth:`values`
    leaves out the options not given.
    """

    model: type[BaseModel]
    fields: Sequence[str]
    flags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    overrides: bool = False

    def flag(self, name: str) -> str:
        return self.flags.get(name, "--" + name.replace("_", "-"))

    def dest(self, name: str) -> str:
        return self.flag(name).lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        for name in self.fields:
            kwargs = {**field_argument(self.model, name, overrides=self.overrides), **self.extra.get(name, {})}
            parser.add_argument(self.flag(name), dest=self.dest(name), **kwargs)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """field name -> the parsed value (without the options not given, with ``overrides``)."""
        values = {name: getattr(args, self.dest(name)) for name in self.fields}
        return {k: v for k, v in values.items() if v is not None} if self.overrides else values
