"""Train the difficulty-aware router from recorded outputs and choose its per-task targets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from routenlp_ray.recording.tables import TaskTable
from routenlp_ray.routing.learned_policy import RouterStartPolicy, choose_targets
from routenlp_ray.routing.router import DifficultyRouter

if TYPE_CHECKING:
    from routenlp_ray.config.app import RouteNLPConfig

PREFERENCE_MARGIN = 0.2


def preference_pairs_from_tables(tables: Sequence[TaskTable]) -> np.ndarray | None:
    """(row, better tier, worse tier) wherever one tier's metric beats another's by the margin."""
    pairs = []
    offset = 0
    for table in tables:
        gaps = table.quality[:, :, None] - table.quality[:, None, :]
        rows, better, worse = np.nonzero(gaps > PREFERENCE_MARGIN)
        pairs.append(np.stack([rows + offset, better, worse], axis=1))
        offset += len(table.ids)
    stacked = np.concatenate(pairs) if pairs else np.zeros((0, 3), dtype=int)
    return stacked if len(stacked) else None


def train_router(
    tables: Sequence[TaskTable], X: dict[str, np.ndarray], tiers: Sequence[str], seed: int, epochs: int
) -> DifficultyRouter:
    features = np.concatenate([X[t.task] for t in tables])
    tasks = [t.task for t in tables for _ in t.ids]
    labels = np.concatenate([t.correct for t in tables]).astype(np.float32)
    return DifficultyRouter(tiers, hidden_dim=64, dropout=0.2, epochs=epochs, weight_decay=1e-2, random_state=seed).fit(
        features, tasks, labels, preference_pairs_from_tables(tables)
    )


def train_router_policy(
    config: "RouteNLPConfig",
    records_dir: str | Path,
    data_dir: str | Path,
    tasks: Sequence[str],
    split: str = "validation",
    seed: int = 0,
    epochs: int = 150,
    encoder: Any = None,
    version: str | None = None,
) -> tuple[RouterStartPolicy, dict[str, Any]]:
    """Fit the router on one half of the recorded examples and choose each task's target on the other.

    The target is the lowest-cost one that keeps the task's ``quality_target`` of frontier
    quality on the held-out half (``choose_targets``). The returned policy is ready to ``save``.
    """
    from routenlp_ray.models.encoder import SentenceEncoder
    from routenlp_ray.recording.tables import build_table, in_held_out_half

    encoder = encoder or SentenceEncoder()
    tables = [build_table(config, Path(records_dir), Path(data_dir), task, split) for task in tasks]
    fit_tables = [t.rows(~np.array([in_held_out_half(i) for i in t.ids])) for t in tables]
    pick_tables = [t.rows(np.array([in_held_out_half(i) for i in t.ids])) for t in tables]
    tiers = tables[0].tiers
    X_fit = {t.task: encoder.encode(t.inputs) for t in fit_tables}
    router = train_router(fit_tables, X_fit, tiers, seed, epochs)
    proba = np.concatenate([router.predict_proba(encoder.encode(t.inputs), [t.task] * len(t.ids)) for t in pick_tables])
    targets = choose_targets(
        proba,
        np.concatenate([t.correct for t in pick_tables]),
        np.concatenate([t.cost for t in pick_tables]),
        [t.task for t in pick_tables for _ in t.ids],
        {task: config.task(task).quality_target for task in tasks},
    )
    version = version or f"router-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    policy = RouterStartPolicy(router, targets=targets, default_target=1.01, encoder=encoder, version=version,
                               encoder_quantized=getattr(encoder, "quantize", True))
    report = {
        "version": version,
        "tiers": tiers,
        "targets": targets,
        "examples": {t.task: {"fit": len(f.ids), "targets": len(p.ids)} for t, f, p in zip(tables, fit_tables, pick_tables)},
        "final_loss": router.loss_curve_[-1],
    }
    return policy, report
