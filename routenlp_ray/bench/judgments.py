"""Routing a real 15-model portfolio on router_judgments (Arena-Bench-V1, GPT-4 scores 1-10).

The router is trained on one part of the prompts and every policy is compared on the
held-out rest: our difficulty-aware router, a RouteLLM-style binary win-rate router, random
routing at matched cost, each single model, and the oracle. Quality is the mean GPT-4 score
divided by 10; cost is USD per query from list prices and estimated token counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from routenlp_ray.bench.curves import (
    OperatingPoint,
    area_under_curve,
    best_point_at_quality,
    cost_at_quality,
    oracle_points,
    routed_point,
)
from routenlp_ray.config._base import StrictModel
from routenlp_ray.engines.base import estimate_tokens
from routenlp_ray.routing.learned_policy import start_indices
from routenlp_ray.routing.router import DifficultyRouter

PORTFOLIO = Path(__file__).parent / "portfolios" / "arena_bench_v1.yaml"
TASK = "router_judgments"
GRID = np.round(np.linspace(0.02, 0.98, 49), 3)


class ModelPrice(StrictModel):
    name: str
    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class Portfolio(StrictModel):
    models: list[ModelPrice] = Field(min_length=2)

    @classmethod
    def load(cls, path: str | Path = PORTFOLIO) -> "Portfolio":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


@dataclass
class JudgmentData:
    ids: list[str]
    inputs: list[str]
    models: list[str]  # cheapest first
    quality: np.ndarray  # (n, m) GPT-4 score / 10
    cost: np.ndarray  # (n, m) USD per query

    def subset(self, rows: np.ndarray) -> "JudgmentData":
        return JudgmentData(
            [self.ids[i] for i in rows], [self.inputs[i] for i in rows], self.models, self.quality[rows], self.cost[rows]
        )


def load_judgments(path: str | Path, portfolio: Portfolio) -> JudgmentData:
    """Prompts on which every portfolio model has a score, models ordered by mean cost."""
    names = [m.name for m in portfolio.models]
    prices = {m.name: m for m in portfolio.models}
    ids, inputs, quality, cost = [], [], [], []
    with Path(path).open() as handle:
        for line in handle:
            row = json.loads(line)
            responses = row["responses"]
            if any(responses.get(n, {}).get("score") is None for n in names):
                continue
            prompt_tokens = estimate_tokens(row["input"])
            ids.append(row["id"])
            inputs.append(row["input"])
            quality.append([responses[n]["score"] / 10 for n in names])
            cost.append([
                (prompt_tokens * prices[n].input_per_1m + estimate_tokens(responses[n]["answer"]) * prices[n].output_per_1m)
                / 1e6
                for n in names
            ])
    q, c = np.asarray(quality), np.asarray(cost)
    order = np.argsort(c.mean(axis=0), kind="stable")
    return JudgmentData(ids, inputs, [names[i] for i in order], q[:, order], c[:, order])


def preference_pairs(quality: np.ndarray, margin: float = 0.2) -> np.ndarray:
    """(row, better, worse) wherever one model's score beats another's by ``margin`` (2 points)."""
    rows, better, worse = [], [], []
    n, m = quality.shape
    for i in range(n):
        gap = quality[i][:, None] - quality[i][None, :]
        a, b = np.nonzero(gap >= margin - 1e-9)
        rows.extend([i] * len(a))
        better.extend(a.tolist())
        worse.extend(b.tolist())
    return np.stack([rows, better, worse], axis=1) if rows else np.zeros((0, 3), dtype=int)


def router_curve(proba: np.ndarray, data: JudgmentData) -> list[OperatingPoint]:
    return [routed_point(start_indices(proba, [t] * len(proba)), data.quality, data.cost, data.models, float(t)) for t in GRID]


def routellm_curve(
    X_train: np.ndarray, train: JudgmentData, X_test: np.ndarray, test: JudgmentData, strong: str, weak: str
) -> list[OperatingPoint]:
    """RouteLLM-style: one binary classifier of 'the strong model wins', thresholded."""
    from sklearn.linear_model import LogisticRegression

    s, w = train.models.index(strong), train.models.index(weak)
    wins = (train.quality[:, s] > train.quality[:, w]).astype(int)
    classifier = LogisticRegression(C=1.0, max_iter=2000).fit(X_train, wins)
    p_strong = classifier.predict_proba(X_test)[:, 1]
    return [
        routed_point(np.where(p_strong >= t, s, w), test.quality, test.cost, test.models, float(t)) for t in GRID
    ]


def random_curve(test: JudgmentData, cheap: str, strong: str, seed: int) -> list[OperatingPoint]:
    """Send each query to ``strong`` with probability p, else to ``cheap`` (matched cost by sweeping p)."""
    rng = np.random.default_rng(seed)
    c, s = test.models.index(cheap), test.models.index(strong)
    draws = rng.random(len(test.ids))
    return [routed_point(np.where(draws < p, s, c), test.quality, test.cost, test.models, float(p)) for p in GRID]


def utility_curve(proba: np.ndarray, model_cost: np.ndarray, data: JudgmentData) -> list[OperatingPoint]:
    """Per query, the model maximising predicted success minus lambda x its mean cost (from training data)."""
    scale = 1.0 / max(float(model_cost.max()), 1e-12)
    lambdas = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 60)]) * scale
    return [
        routed_point(np.argmax(proba - lam * model_cost[None, :], axis=1), data.quality, data.cost, data.models, float(lam))
        for lam in lambdas
    ]


def summarise(points: list[OperatingPoint], max_cost: float, target_quality: float, best_cost: float) -> dict[str, Any]:
    at_target = best_point_at_quality(points, target_quality)
    cost = cost_at_quality(points, target_quality)
    return {
        "auc": area_under_curve(points, max_cost),
        "cost_reduction_at_95pct": None if cost is None else 1 - cost / best_cost,
        "operating_point_at_95pct": at_target.to_dict() if at_target else None,
    }


def evaluate_split(
    data: JudgmentData, X: np.ndarray, test_mask: np.ndarray, seed: int, epochs: int, quality_bar: float
) -> dict[str, Any]:
    """Train on ``~test_mask`` and read every policy on ``test_mask``."""
    train_rows, test_rows = np.nonzero(~test_mask)[0], np.nonzero(test_mask)[0]
    train, test = data.subset(train_rows), data.subset(test_rows)
    X_train, X_test = X[train_rows], X[test_rows]
    tasks_train, tasks_test = [TASK] * len(train.ids), [TASK] * len(test.ids)
    pairs = preference_pairs(train.quality)

    def fit(labels: np.ndarray) -> DifficultyRouter:
        return DifficultyRouter(
            data.models, hidden_dim=64, task_dim=4, dropout=0.2, epochs=epochs, weight_decay=1e-2, random_state=seed
        ).fit(X_train, tasks_train, labels.astype(np.float32), pairs)

    # Binary heads at the quality bar, and soft heads on the judge's score / 10 (the chance a
    # reader rates the answer good), which keeps the information a single bar throws away.
    binary = fit(train.quality >= quality_bar).predict_proba(X_test, tasks_test)
    soft = fit(train.quality).predict_proba(X_test, tasks_test)
    model_cost = train.cost.mean(axis=0)

    mean_quality = test.quality.mean(axis=0)
    best = int(np.argmax(mean_quality))
    best_quality, best_cost = float(mean_quality[best]), float(test.cost[:, best].mean())
    target = 0.95 * best_quality
    max_cost = float(test.cost.mean(axis=0).max())
    curves = {
        "router_binary_cheapest_clearing_target": router_curve(binary, test),
        "router_soft_cheapest_clearing_target": router_curve(soft, test),
        "router_soft_utility": utility_curve(soft, model_cost, test),
        "routellm_binary": routellm_curve(X_train, train, X_test, test, strong=test.models[best],
                                          weak="Mixtral-8x7B-Instruct-v0.1"),
        "random": random_curve(test, test.models[0], test.models[best], seed),
        "single_models": [routed_point(np.full(len(test.ids), k), test.quality, test.cost, test.models, name)
                          for k, name in enumerate(test.models)],
        "oracle": oracle_points(test.quality, test.cost, test.models),
    }
    return {
        "held_out": len(test.ids),
        "best_single_model": {"name": test.models[best], "quality": best_quality, "cost_usd": best_cost},
        "policies": {name: summarise(points, max_cost, target, best_cost) for name, points in curves.items()},
    }


def run_judgments_benchmark(
    data_dir: str | Path,
    encoder: Any = None,
    portfolio_path: str | Path = PORTFOLIO,
    splits: int = 10,
    test_fraction: float = 0.3,
    seed: int = 0,
    quality_bar: float = 0.8,
    epochs: int = 120,
) -> dict[str, Any]:
    """Repeated random train/held-out splits of the prompts; mean and spread of every policy."""
    from routenlp_ray.models.encoder import SentenceEncoder

    data = load_judgments(Path(data_dir) / "router_judgments" / "train.jsonl", Portfolio.load(portfolio_path))
    X = (encoder or SentenceEncoder()).encode(data.inputs)
    runs = []
    for split in range(splits):
        rng = np.random.default_rng(seed + split)
        runs.append(evaluate_split(data, X, rng.random(len(data.ids)) < test_fraction, seed + split, epochs, quality_bar))
    summary: dict[str, Any] = {}
    for name in runs[0]["policies"]:
        aucs = np.array([r["policies"][name]["auc"] for r in runs])
        reductions = [r["policies"][name]["cost_reduction_at_95pct"] for r in runs]
        reached = np.array([x for x in reductions if x is not None], dtype=float)
        summary[name] = {
            "auc_mean": float(aucs.mean()),
            "auc_std": float(aucs.std()),
            "cost_reduction_at_95pct_mean": float(reached.mean()) if reached.size else None,
            "cost_reduction_at_95pct_std": float(reached.std()) if reached.size else None,
            "splits_reaching_95pct": int(reached.size),
        }
    return {
        "task": TASK,
        "prompts_with_every_score": len(data.ids),
        "splits": splits,
        "held_out_fraction": test_fraction,
        "models_cheapest_first": data.models,
        "quality": "mean GPT-4 score / 10 on held-out prompts",
        "target": "95% of the best single model's held-out quality",
        "summary": summary,
        "runs": runs,
    }
