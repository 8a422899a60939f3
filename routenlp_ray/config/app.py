"""The top-level config and its YAML loader."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.cascade import CascadeConfig
from routenlp_ray.config.monitoring import MonitoringConfig
from routenlp_ray.config.releases import ReleasesConfig
from routenlp_ray.config.server import ServerConfig
from routenlp_ray.config.storage import StorageConfig
from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.models.sources import resolve_model_source
from routenlp_ray.tasks.spec import TaskSpec

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RouteNLPConfig(StrictModel):
    """Everything one RouteNLP service needs: tiers, tasks, cascade, storage and server."""

    name: str = Field("routenlp", description="Application name.")
    tiers: list[TierConfig] = Field(min_length=1, description="Model tiers, cheapest first; the last is the frontier.")
    tasks: list[TaskSpec] = Field(
        min_length=1, description="Tasks the service answers; a built-in name needs only the fields it changes."
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="Cascade settings.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Query-log settings.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server settings.")
    monitoring: MonitoringConfig = Field(
        default_factory=MonitoringConfig, description="Live coverage monitoring and recalibration."
    )
    releases: ReleasesConfig = Field(
        default_factory=ReleasesConfig, description="Loop releases the running service follows."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> "RouteNLPConfig":
        _require_unique("tiers", [t.name for t in self.tiers])
        _require_unique("tasks", [t.name for t in self.tasks])
        tier_names = {t.name for t in self.tiers}
        task_names = {t.name for t in self.tasks}
        if self.server.default_task is not None and self.server.default_task not in task_names:
            raise ValueError(
                f"server.default_task ({self.server.default_task!r}) is not a configured task; "
                f"known tasks: {sorted(task_names)}"
            )
        for tier, per_task in self.cascade.thresholds.items():
            if tier not in tier_names:
                raise ValueError(f"cascade.thresholds names unknown tier {tier!r}; known tiers: {sorted(tier_names)}")
            unknown = sorted(set(per_task) - task_names)
            if unknown:
                raise ValueError(
                    f"cascade.thresholds[{tier!r}] names unknown tasks {unknown}; known tasks: {sorted(task_names)}"
                )
        for tier in self.tiers:
            unknown = sorted(set(tier.tasks or []) - task_names)
            if unknown:
                raise ValueError(f"tiers[{tier.name!r}].tasks names unknown tasks {unknown}; known tasks: {sorted(task_names)}")
        if self.tiers[-1].tasks is not None:
            raise ValueError(
                f"the last tier ({self.tiers[-1].name!r}) answers whatever the others do not, so it cannot limit "
                f"its tasks (tasks: {self.tiers[-1].tasks!r})"
            )
        if self.cascade.start_policy == "router" and not self.cascade.router_path:
            raise ValueError("cascade.start_policy is 'router' but cascade.router_path is not set")
        unknown = sorted(set(self.cascade.uncertainty_per_task) - task_names)
        if unknown:
            raise ValueError(f"cascade.uncertainty_per_task names unknown tasks {unknown}")
        self._check_fallback_tier()
        return self

    def _check_fallback_tier(self) -> None:
        name = self.cascade.fallback_tier
        if name is None:
            return
        names = [t.name for t in self.tiers]
        if name not in names:
            raise ValueError(f"cascade.fallback_tier ({name!r}) is not a configured tier; known tiers: {names}")
        if name == self.frontier.name:
            # Every query reaches the last tier already: as its own fallback it would only be asked twice.
            raise ValueError(
                f"cascade.fallback_tier ({name!r}) is the last tier, which every query reaches anyway; "
                f"name a cheaper one of {names[:-1]}"
            )
        if self.tier(name).engine.type == "specialist":
            # A specialist has heads only for its own tasks, so it cannot answer the others at all.
            raise ValueError(
                f"cascade.fallback_tier ({name!r}) is a specialist tier, which answers only its own tasks "
                f"{self.tier(name).tasks}; name a generative tier"
            )

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    @property
    def frontier(self) -> TierConfig:
        return self.tiers[-1]

    def with_absolute_paths(self, base_dir: str | os.PathLike[str]) -> "RouteNLPConfig":
        """Resolve relative local paths against ``base_dir``.

        Replicas do not share the working directory of the process that built the app, so
        the builder pins every relative path before the config is shipped to them.
        """
        base = Path(base_dir)

        def absolute(value: str | None) -> str | None:
            if value is None or "://" in value or value.startswith("package:"):
                return value
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        def local_folder_or_model_id(value: str) -> str:
            # vLLM takes a folder or a model id its workers resolve: only a folder that exists here is pinned.
            if value.startswith("package:"):
                return str(resolve_model_source(value))
            local = absolute(value)
            return local if local and Path(local).exists() else value

        data = self.model_dump(mode="json")
        for tier in data["tiers"]:
            engine = tier["engine"]
            if engine["type"] == "transformers":
                engine["model_source"] = absolute(engine["model_source"])
                engine["adapter_path"] = absolute(engine["adapter_path"])
            if engine["type"] == "vllm":
                engine["model_source"] = local_folder_or_model_id(engine["model_source"])
            if engine["type"] == "specialist":
                engine["path"] = absolute(engine["path"])
                engine["data_dir"] = absolute(engine["data_dir"])
            if engine["type"] == "replay":
                engine["records"] = [absolute(pattern) for pattern in engine["records"]]
        for key in ("thresholds_path", "router_path", "answer_scorer_path"):
            data["cascade"][key] = absolute(data["cascade"][key])
        data["monitoring"]["artifacts_dir"] = absolute(data["monitoring"]["artifacts_dir"])
        data["monitoring"]["calibration_rows"] = absolute(data["monitoring"]["calibration_rows"])
        data["releases"]["path"] = absolute(data["releases"]["path"])
        data["storage"]["log_uri"] = absolute(data["storage"]["log_uri"])
        data["storage"]["spool_dir"] = absolute(data["storage"]["spool_dir"])
        return RouteNLPConfig.model_validate(data)


def _require_unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field} has a duplicate name: {name!r}")
        seen.add(name)


def expand_env(value: Any) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        def _sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name!r} is referenced by the config but not set")

        return _ENV_REF.sub(_sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: the dotted field path, the reason and the offending value."""
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "<root>"
        if err.get("type") == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (value: {err.get('input')!r})")
            continue
        shown = err.get("input")
        value = "" if isinstance(shown, (dict, list)) and len(repr(shown)) > 200 else f" (value: {shown!r})"
        if "api_keys" in err["loc"]:
            value = " (value withheld: it may be a secret)"
        lines.append(f"  {loc}: {err['msg']}{value}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<mapping>") -> RouteNLPConfig:
    """Validate an already-parsed mapping; raises ConfigError naming each bad field and value."""
    if isinstance(data, RouteNLPConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RouteNLPConfig.model_validate(expand_env(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | os.PathLike[str], application: str | None = None) -> RouteNLPConfig:
    """Load and validate a RouteNLP YAML config file.

    The file is either a RouteNLP config or a Ray Serve config whose application ``args``
    hold one (inline, or as ``config: <path>``); ``application`` picks the app by name.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {str(file)!r}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid YAML: {exc}") from None
    if isinstance(data, dict) and "applications" in data:
        apps = [a for a in data["applications"] or [] if application is None or a.get("name") == application]
        if not apps:
            raise ConfigError(f"serve config {str(file)!r} has no application named {application!r}")
        args = apps[0].get("args") or {}
        if set(args) == {"config"} and isinstance(args["config"], str):
            return load_config(args["config"])
        data = args
    return parse_config(data, source=repr(str(file)))
