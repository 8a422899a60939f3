"""The learned start-tier policy over a ``DifficultyRouter``.

Two decision rules, saved in the artifact: ``clear_target`` (the cheapest tier whose predicted
success clears the task's target; the original artifacts) and ``utility`` (the tier maximising
predicted success minus lambda x its mean cost; what ``routing.fit.fit_router`` trains). The
artifact also names its encoder: ``minilm`` (the int8 transformer) or ``static`` (the fast
path, ``models.static_encoder``); a router is served with the encoder it was trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.models.encoder import MINILM_SOURCE
from routenlp_ray.routing.router import DifficultyRouter, read_artifact_meta

POLICY_META = "policy.json"
RULES = ("clear_target", "utility")


def start_indices(proba: np.ndarray, targets: Sequence[float]) -> np.ndarray:
    """Per row, the first (cheapest) tier whose probability clears that row's target; else the last tier."""
    clears = proba >= np.asarray(targets, dtype=float)[:, None]
    first = np.argmax(clears, axis=1)
    return np.where(clears.any(axis=1), first, proba.shape[1] - 1)


class RouterStartPolicy:
    """A ``StartTierPolicy`` built from a ``DifficultyRouter`` and per-task targets."""

    def __init__(
        self,
        router: DifficultyRouter,
        targets: Mapping[str, float],
        default_target: float = 0.5,
        encoder: Any = None,
        version: str = "router",
        encoder_source: str = MINILM_SOURCE,
        encoder_quantized: bool = True,
        encoder_kind: str = "minilm",
        rule: str = "clear_target",
        lam: float = 0.0,
        mean_cost: Sequence[float] | None = None,
    ) -> None:
        if rule not in RULES:
            raise ArtifactError(f"router policy rule must be one of {RULES}; got {rule!r}")
        if rule == "utility" and (mean_cost is None or len(mean_cost) != len(router.tiers)):
            raise ArtifactError(f"the utility rule needs one mean cost per tier ({len(router.tiers)}); got {mean_cost}")
        self.encoder_kind = encoder_kind
        self.rule = rule
        self.lam = float(lam)
        self.mean_cost = None if mean_cost is None else np.asarray(mean_cost, dtype=np.float64)
        self.router = router
        self.targets = dict(targets)
        self.default_target = default_target
        self.version = version
        self.encoder_source = encoder_source
        self.encoder_quantized = encoder_quantized
        self._encoder = encoder

    @classmethod
    def from_utility_router(cls, fitted: Any, encoder: Any, version: str) -> "RouterStartPolicy":
        """Wrap a ``routing.fit.UtilityRouter`` for serving, with the encoder it was trained on."""
        return cls(fitted.router, targets={}, default_target=1.01, encoder=encoder, version=version,
                   encoder_source=getattr(encoder, "model_source", MINILM_SOURCE),
                   encoder_quantized=bool(getattr(encoder, "quantize", False)),
                   encoder_kind=getattr(encoder, "kind", "minilm"), rule="utility", lam=fitted.lam,
                   mean_cost=fitted.mean_cost)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from routenlp_ray.models.static_encoder import make_encoder

            self._encoder = make_encoder(self.encoder_kind, self.encoder_source, self.encoder_quantized)
        return self._encoder

    def target_for(self, task: str) -> float:
        return self.targets.get(task, self.default_target)

    def _indices(self, proba: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
        if self.rule == "utility":
            from routenlp_ray.routing.fit import utility_choice

            return utility_choice(proba, self.mean_cost, self.lam)  # type: ignore[arg-type]
        return start_indices(proba, [self.target_for(t) for t in tasks])

    def start_tier(self, task: str, text: str, tiers: list[str]) -> str:
        proba = self.router.predict_proba(self.encoder.encode_one(text), [task])
        choice = self.router.tiers[int(self._indices(proba, [task])[0])]
        # A tier the router knows but the service no longer has: start at the cheapest live one.
        return choice if choice in tiers else tiers[0]

    def decide_batch(self, texts: Sequence[str], tasks: Sequence[str]) -> list[str]:
        proba = self.router.predict_proba(self.encoder.encode(list(texts)), tasks)
        return [self.router.tiers[int(i)] for i in self._indices(proba, tasks)]

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
        folder = Path(path)
        self.router.save(folder / "router", metadata=metadata)
        meta = {
            "kind": "router_start_policy",
            "version": self.version,
            "targets": self.targets,
            "default_target": self.default_target,
            "encoder_source": self.encoder_source,
            "encoder_quantized": self.encoder_quantized,
            "encoder_kind": self.encoder_kind,
            "rule": self.rule,
            "lambda": self.lam,
            "mean_cost": None if self.mean_cost is None else self.mean_cost.tolist(),
            "metadata": metadata or {},
        }
        (folder / POLICY_META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Any = None) -> "RouterStartPolicy":
        folder = Path(path)
        meta = read_artifact_meta(folder, POLICY_META, "router policy artifact")
        return cls(
            DifficultyRouter.load(folder / "router"),
            targets=meta["targets"],
            default_target=meta["default_target"],
            encoder=encoder,
            version=meta["version"],
            encoder_source=meta.get("encoder_source", MINILM_SOURCE),
            encoder_quantized=meta.get("encoder_quantized", True),
            encoder_kind=meta.get("encoder_kind", "minilm"),
            rule=meta.get("rule", "clear_target"),
            lam=meta.get("lambda", 0.0),
            mean_cost=meta.get("mean_cost"),
        )


def load_router_policy(path: str | None) -> RouterStartPolicy:
    """The factory behind ``cascade.start_policy: router``."""
    if not path:
        raise ArtifactError("start_policy 'router' needs cascade.router_path (a saved RouterStartPolicy folder)")
    policy = RouterStartPolicy.load(path)
    policy.encoder  # load the encoder now, not on the first request  # noqa: B018
    return policy


def choose_targets(
    proba: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    tasks: Sequence[str],
    quality_targets: Mapping[str, float],
    grid: Sequence[float] = tuple(np.round(np.arange(0.05, 1.0, 0.025), 3)),
) -> dict[str, float]:
    """Per task, the target with the lowest routed cost whose quality keeps ``quality_targets[task]``
    of the last (frontier) tier's quality on this validation data. With no feasible target the
    task gets 1.01: every query starts at the frontier."""
    tasks = np.asarray(tasks)
    chosen: dict[str, float] = {}
    for task in sorted(set(tasks.tolist())):
        rows = tasks == task
        p, ok, c = proba[rows], correct[rows], cost[rows]
        frontier_quality = float(np.nanmean(ok[:, -1]))
        best: tuple[float, float, float] | None = None  # (cost, -quality, target)
        for target in grid:
            start = start_indices(p, [target] * len(p))
            quality = float(np.nanmean(ok[np.arange(len(p)), start]))
            spend = float(np.nanmean(c[np.arange(len(p)), start]))
            if quality >= quality_targets.get(task, 0.96) * frontier_quality:
                candidate = (spend, -quality, float(target))
                best = candidate if best is None or candidate < best else best
        chosen[task] = best[2] if best is not None else 1.01
    return chosen
