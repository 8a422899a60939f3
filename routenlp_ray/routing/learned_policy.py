"""The learned start-tier policy: the cheapest tier whose predicted success clears the task's target."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.models.encoder import MINILM_SOURCE, SentenceEncoder
from routenlp_ray.routing.router import DifficultyRouter

POLICY_META = "policy.json"


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
        encoder: SentenceEncoder | None = None,
        version: str = "router",
        encoder_source: str = MINILM_SOURCE,
        encoder_quantized: bool = True,
    ) -> None:
        self.router = router
        self.targets = dict(targets)
        self.default_target = default_target
        self.version = version
        self.encoder_source = encoder_source
        self.encoder_quantized = encoder_quantized
        self._encoder = encoder

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = SentenceEncoder(self.encoder_source, quantize=self.encoder_quantized)
        return self._encoder

    def target_for(self, task: str) -> float:
        return self.targets.get(task, self.default_target)

    def start_tier(self, task: str, text: str, tiers: list[str]) -> str:
        proba = self.router.predict_proba(self.encoder.encode_one(text), [task])
        choice = self.router.tiers[int(start_indices(proba, [self.target_for(task)])[0])]
        # A tier the router knows but the service no longer has: start at the cheapest live one.
        return choice if choice in tiers else tiers[0]

    def decide_batch(self, texts: Sequence[str], tasks: Sequence[str]) -> list[str]:
        proba = self.router.predict_proba(self.encoder.encode(list(texts)), tasks)
        indices = start_indices(proba, [self.target_for(t) for t in tasks])
        return [self.router.tiers[int(i)] for i in indices]

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
            "metadata": metadata or {},
        }
        (folder / POLICY_META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: SentenceEncoder | None = None) -> "RouterStartPolicy":
        folder = Path(path)
        try:
            meta = json.loads((folder / POLICY_META).read_text())
        except FileNotFoundError:
            raise ArtifactError(f"router policy artifact {str(folder)!r} has no {POLICY_META}") from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"router policy artifact {str(folder)!r} is unreadable: {exc}") from None
        return cls(
            DifficultyRouter.load(folder / "router"),
            targets=meta["targets"],
            default_target=meta["default_target"],
            encoder=encoder,
            version=meta["version"],
            encoder_source=meta.get("encoder_source", MINILM_SOURCE),
            encoder_quantized=meta.get("encoder_quantized", True),
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
