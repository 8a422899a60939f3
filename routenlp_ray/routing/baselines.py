"""Baseline routers, fitted on the same embeddings as the learned router.

- ``MatrixFactorizationRouter``: RouteLLM's matrix-factorisation router (lm-sys/RouteLLM,
  ``routers/matrix_factorization``), its best router. A model's score on a prompt is
  ``w . (normalise(P[model]) * W x)`` (no biases, no non-linearity), trained with a logistic
  loss on ``score(winner) - score(loser)`` over pairwise battles, with Gaussian noise (0.1) on
  the prompt embedding. RouteLLM routes between one strong and one weak model with
  ``sigmoid(score_strong - score_weak)``. For N models we keep that pairwise form
  (``pair_win_rate``) and also use the same learned scores N-way: the predicted win rate of
  every model against the strongest one, ``sigmoid(score_m - score_best)``, in the same utility
  rule as every other router. The battles are every pair of models whose quality differs on a
  training prompt (ties dropped, as RouteLLM drops them). Differences from RouteLLM: our
  384-d MiniLM-derived embeddings instead of OpenAI's 1536-d ones; at most 32 battles per
  prompt; batches of 1024 battles for 10 epochs at learning rate 1e-3 instead of 64 for 100 at
  3e-4, so that five seeds of three sources train in minutes on a shared 2-core CPU.
- ``WinRateRouter``: the project's earlier RouteLLM-style router: a logistic regression of
  "the strong model beats the weak one" on the embedding, thresholded.
- ``KNNRouter``: per model, the mean quality of the k nearest training prompts (cosine).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class MatrixFactorizationRouter:
    def __init__(self, n_models: int, dim: int = 128, epochs: int = 10, batch_size: int = 1024,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, noise: float = 0.1,
                 max_pairs_per_row: int = 32, random_state: int = 0) -> None:
        self.n_models = n_models
        self.dim = dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.noise = noise
        self.max_pairs_per_row = max_pairs_per_row
        self.random_state = random_state

    def _battles(self, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows, winners, losers = [], [], []
        for i, q in enumerate(quality):
            gap = q[:, None] - q[None, :]
            a, b = np.nonzero(np.nan_to_num(gap, nan=0.0) > 1e-9)
            if len(a) > self.max_pairs_per_row:
                keep = rng.choice(len(a), self.max_pairs_per_row, replace=False)
                a, b = a[keep], b[keep]
            rows.extend([i] * len(a))
            winners.extend(a.tolist())
            losers.extend(b.tolist())
        return np.array([rows, winners, losers], dtype=np.int64).T.reshape(-1, 3)

    def fit(self, X: np.ndarray, quality: np.ndarray) -> "MatrixFactorizationRouter":
        import torch
        from torch import nn

        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        battles = torch.from_numpy(self._battles(quality, rng))
        X_t = torch.from_numpy(np.asarray(X, dtype=np.float32))
        self.P_ = nn.Embedding(self.n_models, self.dim)
        self.proj_ = nn.Linear(X_t.shape[1], self.dim, bias=False)
        self.classifier_ = nn.Linear(self.dim, 1, bias=False)
        params = [*self.P_.parameters(), *self.proj_.parameters(), *self.classifier_.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            order = torch.from_numpy(rng.permutation(len(battles)))
            for start in range(0, len(order), self.batch_size):
                batch = battles[order[start : start + self.batch_size]]
                prompts = X_t[batch[:, 0]]
                prompts = prompts + torch.randn_like(prompts) * self.noise
                win = nn.functional.normalize(self.P_(batch[:, 1]), dim=1)
                lose = nn.functional.normalize(self.P_(batch[:, 2]), dim=1)
                logits = self.classifier_((win - lose) * self.proj_(prompts)).squeeze(-1)
                loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(n, n_models): each model's MF score on each prompt (higher = more likely to win)."""
        import torch

        with torch.inference_mode():
            models = torch.nn.functional.normalize(self.P_.weight, dim=1)
            prompts = self.proj_(torch.from_numpy(np.asarray(X, dtype=np.float32)))
            return self.classifier_(prompts[:, None, :] * models[None, :, :]).squeeze(-1).numpy()

    def win_rate_against(self, X: np.ndarray, reference: int) -> np.ndarray:
        s = self.scores(X)
        return 1.0 / (1.0 + np.exp(-(s - s[:, [reference]])))

    def pair_win_rate(self, X: np.ndarray, strong: int, weak: int) -> np.ndarray:
        s = self.scores(X)
        return 1.0 / (1.0 + np.exp(-(s[:, strong] - s[:, weak])))


class WinRateRouter:
    """P(strong beats weak | prompt) by logistic regression; the project's earlier baseline."""

    def __init__(self, strong: int, weak: int, C: float = 1.0) -> None:
        self.strong = strong
        self.weak = weak
        self.C = C

    def fit(self, X: np.ndarray, quality: np.ndarray) -> "WinRateRouter":
        from sklearn.linear_model import LogisticRegression

        wins = (quality[:, self.strong] > quality[:, self.weak]).astype(int)
        if wins.min() == wins.max():
            self.constant_ = float(wins[0])
        else:
            self.classifier_: Any = LogisticRegression(C=self.C, max_iter=2000).fit(X, wins)
        return self

    def p_strong(self, X: np.ndarray) -> np.ndarray:
        if hasattr(self, "constant_"):
            return np.full(len(X), self.constant_)
        return self.classifier_.predict_proba(X)[:, 1]


class KNNRouter:
    """Predicted quality of each model = its mean quality over the k most similar training prompts."""

    def __init__(self, k: int = 20) -> None:
        self.k = k

    def fit(self, X: np.ndarray, quality: np.ndarray) -> "KNNRouter":
        self.X_ = np.asarray(X, dtype=np.float32)
        self.quality_ = np.asarray(quality, dtype=np.float64)
        return self

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        sims = np.asarray(X, dtype=np.float32) @ self.X_.T
        k = min(self.k, self.X_.shape[0])
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.nanmean(self.quality_[nearest], axis=1)
