"""One entry point to train a start-tier router for any portfolio: ``fit_router``.

It takes train rows (prompts, tasks, per-model quality), the models' prices and a quality
target, and returns a ``UtilityRouter``: per query, start at the model maximising
``P(success) - lambda * mean cost``. Everything it chooses, it chooses on a seeded slice of
the rows it is given (``tune_fraction``): the head kind (per-model heads or a model
embedding), and lambda, the cheapest setting whose routed quality on that slice reaches
``target`` x the best single model's. It refuses rows that are not from the train split, so
validation rows cannot reach a setting (the check the CI relies on).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.routing.data import ModelPrice, RouterDataset
from routenlp_ray.routing.router import HEADS, DifficultyRouter, read_artifact_meta

UTILITY_META = "utility.json"
# lambda is searched in units of 1 / (the dearest model's mean cost): scale-free across portfolios.
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-4, 1e2, 80)])


class FitSettings(StrictModel):
    """Hyper-parameters of ``fit_router``; the head kind and lambda are chosen, not set."""

    heads: list[str] = Field(default_factory=lambda: list(HEADS), min_length=1,
                             description="Head kinds to try; the one with the higher AUC on the tune slice wins.")
    hidden_dim: int = Field(128, gt=0, description="Width of the shared trunk.")
    task_dim: int = Field(16, gt=0, description="Size of the learned task embedding.")
    model_dim: int = Field(32, gt=0, description="Size of the model embedding (model_embedding head).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in the trunk.")
    epochs: int = Field(40, gt=0, description="Training epochs.")
    batch_size: int | None = Field(None, gt=0, description="Rows per step; default a tenth of the rows, 32 to 256, "
                                   "so that a small portfolio still gets enough steps.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-3, ge=0, description="AdamW weight decay.")
    pairwise_weight: float = Field(0.5, ge=0, description="Weight of the preference-pair loss.")
    pair_margin: float = Field(0.2, ge=0, description="Quality gap that makes a preference pair (0/1 data: any gap).")
    max_pairs_per_row: int = Field(64, gt=0, description="Preference pairs sampled per prompt at most.")
    tune_fraction: float = Field(0.25, gt=0, lt=1, description="Share of train rows used only to choose settings.")


def check_prices(models: Sequence[str], prices: dict[str, ModelPrice]) -> None:
    missing = [m for m in models if m not in prices]
    if missing:
        raise ConfigError(f"model(s) {missing} have no price; a router only routes among priced models "
                          f"(priced: {sorted(prices)})")


def check_train_only(data: RouterDataset) -> None:
    bad = sorted({s for s in data.splits if s != "train"})
    if bad:
        raise ConfigError(f"fit_router takes train rows only; got rows from split(s) {bad}")


def preference_pairs(quality: np.ndarray, margin: float, max_per_row: int, seed: int) -> np.ndarray:
    """(row, better, worse) wherever one model's quality beats another's by ``margin``; NaN never pairs."""
    rng = np.random.default_rng(seed)
    chunks = []
    for i, q in enumerate(quality):
        gap = np.nan_to_num(q[:, None] - q[None, :], nan=-np.inf)
        a, b = np.nonzero(gap >= max(margin, 1e-9) - 1e-12)
        if len(a) > max_per_row:
            keep = rng.choice(len(a), max_per_row, replace=False)
            a, b = a[keep], b[keep]
        chunks.append(np.stack([np.full(len(a), i), a, b], axis=1))
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros((0, 3), dtype=np.int64)


def utility_choice(scores: np.ndarray, mean_cost: np.ndarray, lam: float) -> np.ndarray:
    """Per row, argmax of score - lam * cost / max cost; ties go to the cheaper model."""
    scale = 1.0 / max(float(np.nanmax(mean_cost)), 1e-300)
    utility = scores - lam * scale * mean_cost[None, :] - 1e-9 * scale * mean_cost[None, :]
    return np.argmax(np.nan_to_num(utility, nan=-np.inf), axis=1)


def routed(choice: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    rows = np.arange(len(choice))
    return float(np.nanmean(quality[rows, choice])), float(np.nanmean(cost[rows, choice]))


def auc(points: Sequence[tuple[float, float]], max_cost: float) -> float:
    """Mean over budgets in [0, max_cost] of the best quality reachable within the budget."""
    front: list[tuple[float, float]] = []
    for q, c in sorted(points, key=lambda p: (p[1], -p[0])):
        if c <= max_cost and (not front or q > front[-1][0]):
            front.append((q, c))
    if not front or max_cost <= 0:
        return 0.0
    area = sum(q * ((front[i + 1][1] if i + 1 < len(front) else max_cost) - c) for i, (q, c) in enumerate(front))
    return float(area / max_cost)


def choose_setting(points: Sequence[tuple[float, float, float]], quality_needed: float) -> float:
    """The setting of the cheapest point reaching ``quality_needed``; else the best-quality point's.

    Several settings often give that same point on the tune slice (a plateau of lambdas or
    thresholds); the middle one of the plateau is taken, so that a new query needs the largest
    change in its scores to be routed differently from the tune slice's choice.
    """
    reaching = [p for p in points if p[0] >= quality_needed - 1e-12]
    if reaching:
        target = min(reaching, key=lambda p: (p[1], -p[0]))
    else:
        target = max(points, key=lambda p: (p[0], -p[1]))
    tied = [p for p in points if abs(p[1] - target[1]) <= 1e-12 * max(abs(target[1]), 1e-300)
            and abs(p[0] - target[0]) <= 1e-12]
    tied.sort(key=lambda p: p[2])
    return float(tied[len(tied) // 2][2])


def best_single(quality: np.ndarray, cost: np.ndarray) -> int:
    means = np.nanmean(quality, axis=0)
    return int(np.lexsort((cost.mean(axis=0), -means))[0])


def split_fit_tune(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_tune = max(1, int(round(n * fraction)))
    return np.sort(order[n_tune:]), np.sort(order[:n_tune])


class UtilityRouter:
    """A fitted router: the quality model, the models' mean costs, and the chosen lambda."""

    def __init__(self, router: DifficultyRouter, mean_cost: np.ndarray, lam: float, target: float,
                 report: dict[str, Any] | None = None) -> None:
        self.router = router
        self.models = list(router.tiers)
        self.mean_cost = np.asarray(mean_cost, dtype=np.float64)
        self.lam = float(lam)
        self.target = float(target)
        self.report = report or {}

    def predict_proba(self, X: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
        return self.router.predict_proba(X, tasks)

    def decide(self, X: np.ndarray, tasks: Sequence[str], lam: float | None = None) -> np.ndarray:
        """Model index per row (models cheapest first)."""
        return utility_choice(self.predict_proba(X, tasks), self.mean_cost, self.lam if lam is None else lam)

    def save(self, path: str | os.PathLike[str]) -> Path:
        folder = Path(path)
        self.router.save(folder / "router")
        meta = {"kind": "utility_router", "models": self.models, "mean_cost": self.mean_cost.tolist(),
                "lambda": self.lam, "target": self.target, "report": self.report}
        (folder / UTILITY_META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "UtilityRouter":
        folder = Path(path)
        meta = read_artifact_meta(folder, UTILITY_META, "utility router")
        return cls(DifficultyRouter.load(folder / "router"), np.asarray(meta["mean_cost"]), meta["lambda"],
                   meta["target"], meta.get("report", {}))


def _fit_quality_model(X: np.ndarray, data: RouterDataset, head: str, settings: FitSettings, seed: int,
                       epochs: int | None = None) -> DifficultyRouter:
    pairs = preference_pairs(data.quality, settings.pair_margin, settings.max_pairs_per_row, seed)
    batch_size = settings.batch_size or int(np.clip(len(data) // 10, 32, 256))
    return DifficultyRouter(
        data.models, hidden_dim=settings.hidden_dim, task_dim=settings.task_dim, dropout=settings.dropout,
        epochs=epochs or settings.epochs, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        pairwise_weight=settings.pairwise_weight, random_state=seed, head=head, model_dim=settings.model_dim,
        batch_size=batch_size,
    ).fit(X, data.tasks, data.quality.astype(np.float32), pairs)


def utility_points(scores: np.ndarray, mean_cost: np.ndarray, quality: np.ndarray,
                   cost: np.ndarray) -> list[tuple[float, float, float]]:
    """(quality, cost, lambda) over the lambda grid."""
    return [(*routed(utility_choice(scores, mean_cost, lam), quality, cost), float(lam)) for lam in LAMBDAS]


def fit_router(data: RouterDataset, X: np.ndarray, target: float = 0.95, settings: FitSettings | None = None,
               seed: int = 0) -> UtilityRouter:
    """Fit the router on train rows; choose the head kind and lambda on a seeded slice of them.

    ``X`` holds the rows' embeddings. ``target`` is the share of the best single model's quality
    (on the tune slice) that the chosen lambda must keep.
    """
    settings = settings or FitSettings()
    check_train_only(data)
    check_prices(data.models, data.prices)
    if not 0 < target <= 1:
        raise ConfigError(f"target must be in (0, 1]; got {target}")
    fit_rows, tune_rows = split_fit_tune(len(data), settings.tune_fraction, seed)
    fit, tune = data.subset(fit_rows), data.subset(tune_rows)
    mean_cost = np.nanmean(fit.cost, axis=0)
    max_cost = float(np.nanmean(tune.cost, axis=0).max())
    trials = {}
    for head in settings.heads:
        model = _fit_quality_model(X[fit_rows], fit, head, settings, seed)
        points = utility_points(model.predict_proba(X[tune_rows], tune.tasks), mean_cost, tune.quality, tune.cost)
        trials[head] = (auc([(q, c) for q, c, _ in points], max_cost), model, points)
    head = max(trials, key=lambda h: trials[h][0])
    _, model, points = trials[head]
    best = best_single(fit.quality, fit.cost)
    needed = target * float(np.nanmean(tune.quality[:, best]))
    lam = choose_setting(points, needed)
    report = {"head": head, "tune_auc": {h: t[0] for h, t in trials.items()}, "lambda": lam,
              "fit_rows": len(fit), "tune_rows": len(tune), "seed": seed, "settings": settings.model_dump(),
              "train_ids_sha1": hashlib.sha1("\n".join(data.ids).encode()).hexdigest()}
    fitted = UtilityRouter(model, mean_cost, lam, target, report)
    # Every head kind tried, for reports that show what the choice was between; not saved.
    fitted.candidates_ = {h: t[1] for h, t in trials.items()}
    return fitted
