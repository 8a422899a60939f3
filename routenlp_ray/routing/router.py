"""The difficulty-aware router: a shared task-conditioned trunk with one quality head per tier.

``DifficultyRouter`` follows scikit-learn: parameters in ``__init__``, ``fit`` returns
``self``, learned attributes end in ``_``, ``predict_proba`` returns an array of shape
``(n_queries, n_tiers)`` where entry ``[i, k]`` is P(tier k meets the task's quality bar on
query i). Inputs are sentence embeddings (see ``SentenceEncoder``) plus task names.

Training uses two signals at once:
- per-tier correct/failed labels (binary cross-entropy; missing labels are NaN and masked);
- pairwise preferences ``(row, better_tier, worse_tier)``: a logistic loss on the gap of the
  two heads' logits, so the heads also agree on which tier is better for that query.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray._exceptions import ArtifactError, NotFittedError

UNKNOWN_TASK = "<unk>"
ARTIFACT_META = "router.json"
ARTIFACT_WEIGHTS = "router.pt"


HEADS = ("per_model", "model_embedding")


def _network(input_dim: int, n_tasks: int, n_tiers: int, hidden_dim: int, task_dim: int, dropout: float,
             head: str = "per_model", model_dim: int = 32) -> Any:
    import torch
    from torch import nn

    class ModelEmbeddingHead(nn.Module):
        """logit(query, model) = w . GELU(U h + V e_model) + b_model: a new model only needs its e_model."""

        def __init__(self) -> None:
            super().__init__()
            self.models = nn.Embedding(n_tiers, model_dim)
            self.query = nn.Linear(hidden_dim, hidden_dim)
            self.model = nn.Linear(model_dim, hidden_dim, bias=False)
            self.out = nn.Linear(hidden_dim, 1)
            self.bias = nn.Parameter(torch.zeros(n_tiers))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            joint = torch.nn.functional.gelu(self.query(h)[:, None, :] + self.model(self.models.weight)[None, :, :])
            return self.out(joint).squeeze(-1) + self.bias

    class RouterNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.task_embedding = nn.Embedding(n_tasks, task_dim)
            self.trunk = nn.Sequential(
                nn.Linear(input_dim + task_dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, hidden_dim),
                nn.GELU(),
            )
            # One logit per tier: a linear head each, or a shared head over learned model embeddings.
            self.heads = nn.Linear(hidden_dim, n_tiers) if head == "per_model" else ModelEmbeddingHead()

        def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
            return self.heads(self.trunk(torch.cat([x, self.task_embedding(task_ids)], dim=-1)))

    return RouterNetwork()


def read_artifact_meta(folder: Path, name: str, what: str) -> dict[str, Any]:
    """``folder/name`` as JSON; a missing or unreadable file is an ``ArtifactError`` naming ``what``."""
    try:
        return json.loads((folder / name).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{what} {str(folder)!r} has no {name}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{what} {str(folder)!r} is unreadable: {exc}") from None


class DifficultyRouter:
    """Predicts, per tier, the probability that its answer meets the task's quality bar."""

    def __init__(
        self,
        tiers: Sequence[str],
        hidden_dim: int = 128,
        task_dim: int = 16,
        dropout: float = 0.1,
        epochs: int = 80,
        learning_rate: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        pairwise_weight: float = 0.5,
        unknown_task_rate: float = 0.1,
        random_state: int = 0,
        head: str = "per_model",
        model_dim: int = 32,
    ) -> None:
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {head!r}")
        self.head = head
        self.model_dim = model_dim
        self.tiers = list(tiers)
        self.hidden_dim = hidden_dim
        self.task_dim = task_dim
        self.dropout = dropout
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.pairwise_weight = pairwise_weight
        self.unknown_task_rate = unknown_task_rate
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            "tiers": self.tiers,
            "hidden_dim": self.hidden_dim,
            "task_dim": self.task_dim,
            "dropout": self.dropout,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "pairwise_weight": self.pairwise_weight,
            "unknown_task_rate": self.unknown_task_rate,
            "random_state": self.random_state,
            "head": self.head,
            "model_dim": self.model_dim,
        }

    # -- fitting --------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        tasks: Sequence[str],
        y: np.ndarray,
        pairs: np.ndarray | None = None,
    ) -> "DifficultyRouter":
        """Fit on embeddings ``X`` (n, d), task names (n,), labels ``y`` (n, n_tiers) in {0, 1, NaN}.

        ``pairs`` is an int array (m, 3) of ``(row, better_tier_index, worse_tier_index)``.
        """
        import torch

        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        if X.ndim != 2 or y.shape != (X.shape[0], len(self.tiers)):
            raise ValueError(
                f"expected X of shape (n, d) and y of shape (n, {len(self.tiers)}); got {X.shape} and {y.shape}"
            )
        if len(tasks) != X.shape[0]:
            raise ValueError(f"tasks has {len(tasks)} entries for {X.shape[0]} rows")
        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        self.tasks_ = [UNKNOWN_TASK, *sorted(set(tasks))]
        self.n_features_in_ = X.shape[1]
        task_ids = np.array([self.tasks_.index(t) for t in tasks], dtype=np.int64)
        self.model_ = _network(X.shape[1], len(self.tasks_), len(self.tiers), self.hidden_dim, self.task_dim,
                               self.dropout, self.head, self.model_dim)
        optimizer = torch.optim.AdamW(self.model_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        X_t, y_t, ids_t = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(task_ids)
        pairs_t = torch.from_numpy(np.asarray(pairs, dtype=np.int64)) if pairs is not None and len(pairs) else None
        self.loss_curve_: list[float] = []
        self.model_.train()
        for _ in range(self.epochs):
            order = rng.permutation(X.shape[0])
            epoch_loss = 0.0
            for start in range(0, len(order), self.batch_size):
                rows = torch.from_numpy(order[start : start + self.batch_size])
                batch_ids = ids_t[rows].clone()
                # Hide the task now and then, so the <unk> row learns a task-agnostic prior.
                hide = torch.from_numpy(rng.random(len(rows)) < self.unknown_task_rate)
                batch_ids[hide] = 0
                logits = self.model_(X_t[rows], batch_ids)
                loss = _masked_bce(logits, y_t[rows])
                if pairs_t is not None and self.pairwise_weight > 0:
                    loss = loss + self.pairwise_weight * _pair_loss(pairs_t, rows, logits, X.shape[0])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                epoch_loss += loss.item() * len(rows)
            self.loss_curve_.append(epoch_loss / X.shape[0])
        self.model_.eval()
        return self

    # -- prediction -----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this DifficultyRouter is not fitted yet; call fit before predict_proba")

    def predict_proba(self, X: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
        """Array (n_queries, n_tiers): P(tier meets the task's quality bar); unknown tasks use the prior."""
        import torch

        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the router was fitted with {self.n_features_in_}")
        index = {t: i for i, t in enumerate(self.tasks_)}
        ids = torch.tensor([index.get(t, 0) for t in tasks], dtype=torch.int64)
        with torch.inference_mode():
            return torch.sigmoid(self.model_(torch.from_numpy(X), ids)).numpy()

    # -- artifacts ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
        import torch

        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_.state_dict(), folder / ARTIFACT_WEIGHTS)
        meta = {
            "kind": "difficulty_router",
            "params": self.get_params(),
            "tasks_": self.tasks_,
            "n_features_in_": self.n_features_in_,
            "metadata": metadata or {},
        }
        (folder / ARTIFACT_META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "DifficultyRouter":
        import torch

        folder = Path(path)
        try:
            meta = json.loads((folder / ARTIFACT_META).read_text())
            state = torch.load(folder / ARTIFACT_WEIGHTS, weights_only=True)
        except FileNotFoundError as exc:
            raise ArtifactError(f"router artifact {str(folder)!r} is incomplete: {exc.filename} is missing") from None
        except (json.JSONDecodeError, RuntimeError) as exc:
            raise ArtifactError(f"router artifact {str(folder)!r} is unreadable: {exc}") from None
        router = cls(**meta["params"])
        router.tasks_ = meta["tasks_"]
        router.n_features_in_ = meta["n_features_in_"]
        router.model_ = _network(
            router.n_features_in_, len(router.tasks_), len(router.tiers), router.hidden_dim, router.task_dim,
            router.dropout, router.head, router.model_dim,
        )
        router.model_.load_state_dict(state)
        router.model_.eval()
        router.metadata_ = meta.get("metadata", {})
        return router


def _masked_bce(logits: Any, targets: Any) -> Any:
    import torch

    mask = ~torch.isnan(targets)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], targets[mask])


def _pair_loss(pairs: Any, rows: Any, logits: Any, n_rows: int) -> Any:
    """Logistic loss on the logit gap of each (better, worse) pair whose row is in this batch."""
    import torch

    local = torch.full((n_rows,), -1, dtype=torch.int64)
    local[rows] = torch.arange(len(rows))
    position = local[pairs[:, 0]]
    keep = position >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    chosen, position = pairs[keep], position[keep]
    gap = logits[position, chosen[:, 1]] - logits[position, chosen[:, 2]]
    return torch.nn.functional.softplus(-gap).mean()
