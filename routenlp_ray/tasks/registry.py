"""The six built-in tasks of the RouteNLP benchmark, as specs (their defaults are in ``builtins``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.tasks.builtins import BUILTIN_DEFAULTS
from routenlp_ray.tasks.spec import TaskSpec

__all__ = ["BUILTIN_TASKS", "TaskSpec", "get_task_spec"]

BUILTIN_TASKS: Mapping[str, TaskSpec] = MappingProxyType({name: TaskSpec(name=name) for name in BUILTIN_DEFAULTS})


def get_task_spec(name: str) -> TaskSpec:
    """The built-in task called ``name``; raises ``ConfigError`` listing the built-ins otherwise."""
    try:
        return BUILTIN_TASKS[name]
    except KeyError:
        raise ConfigError(f"no built-in task {name!r}; built-in tasks: {sorted(BUILTIN_TASKS)}") from None
