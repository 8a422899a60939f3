"""Router data sets: prompts, per-model quality and per-query cost, with the split each row came from.

A source folder holds ``train.jsonl`` (and ``validation.jsonl``, ``test.jsonl`` where it has them)
with one prompt per line and ``responses: {model: {"score": ..., "output_tokens": ...}}``, and a
``models.json`` with list prices. ``router_judgments`` has no prices there and no validation
split: its prices come from the project's portfolio file and a fixed, hash-chosen quarter of
its train split is its validation (``JUDGMENTS_HOLDOUT``).

Every row carries the split it was read from, so a fitting function can refuse rows that are
not ``train`` (see ``routing.fit``): settings are never chosen on validation by construction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.engines.base import estimate_tokens

PORTFOLIO = Path(__file__).resolve().parent.parent / "bench" / "portfolios" / "arena_bench_v1.yaml"
JUDGMENTS = "router_judgments"
# Share of router_judgments' train split held out as its validation, chosen by a hash of the id.
JUDGMENTS_HOLDOUT = 25
# A priced model joins the portfolio when it is scored on at least this share of train rows.
MIN_COVERAGE = 0.97


class ModelPrice(StrictModel):
    name: str
    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class Portfolio(StrictModel):
    models: list[ModelPrice] = Field(min_length=2)

    @classmethod
    def load(cls, path: str | Path = PORTFOLIO) -> "Portfolio":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))

    def prices(self) -> dict[str, ModelPrice]:
        return {m.name: m for m in self.models}


@dataclass
class RouterDataset:
    """Rows of one or more sources; ``quality`` and ``cost`` are (n_rows, n_models), models cheapest first."""

    ids: list[str]
    inputs: list[str]
    tasks: list[str]  # "<source>/<subtask>": the task the shared trunk is conditioned on
    splits: list[str]
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    prices: dict[str, ModelPrice]
    notes: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int] | np.ndarray) -> "RouterDataset":
        rows = np.asarray(rows, dtype=np.int64)
        return RouterDataset(
            [self.ids[i] for i in rows], [self.inputs[i] for i in rows], [self.tasks[i] for i in rows],
            [self.splits[i] for i in rows], self.models, self.quality[rows], self.cost[rows], self.prices, self.notes,
        )

    def with_models(self, models: Sequence[str]) -> "RouterDataset":
        index = [self.models.index(m) for m in models]
        return RouterDataset(self.ids, self.inputs, self.tasks, self.splits, list(models), self.quality[:, index],
                             self.cost[:, index], {m: self.prices[m] for m in models}, self.notes)

    def mean_cost(self) -> np.ndarray:
        return self.cost.mean(axis=0)


def hash_bucket(row_id: str) -> int:
    return int(hashlib.sha1(row_id.encode()).hexdigest(), 16) % 100


def _read_jsonl(path: Path) -> list[dict]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def source_name(folder: str | Path) -> str:
    return Path(folder).resolve().name


def source_prices(folder: str | Path, portfolio: str | Path = PORTFOLIO) -> tuple[dict[str, ModelPrice], list[str]]:
    """Prices of the models that have one, and the names of those that have none."""
    folder = Path(folder)
    if source_name(folder) == JUDGMENTS:
        return Portfolio.load(portfolio).prices(), []
    meta = json.loads((folder / "models.json").read_text())
    prices, unpriced = {}, []
    for name, info in meta.items():
        if info.get("input_usd_per_1m") is None or info.get("output_usd_per_1m") is None:
            unpriced.append(name)
        else:
            prices[name] = ModelPrice(name=name, input_per_1m=info["input_usd_per_1m"],
                                      output_per_1m=info["output_usd_per_1m"])
    return prices, sorted(unpriced)


def _split_rows(folder: Path, split: str) -> list[dict]:
    """Rows of ``split``; for router_judgments, validation is a fixed hashed part of train."""
    if source_name(folder) == JUDGMENTS and split in ("train", "validation"):
        rows = _read_jsonl(folder / "train.jsonl")
        held = [r for r in rows if hash_bucket(r["id"]) < JUDGMENTS_HOLDOUT]
        kept = [r for r in rows if hash_bucket(r["id"]) >= JUDGMENTS_HOLDOUT]
        return held if split == "validation" else kept
    path = folder / f"{split}.jsonl"
    if not path.exists():
        raise ConfigError(f"router data {str(folder)!r} has no {split}.jsonl (split {split!r})")
    return _read_jsonl(path)


def _score(response: dict | None, source: str) -> float | None:
    if not response or response.get("score") is None:
        return None
    # GPT-4 scores 1-10 become a chance-like quality in [0, 1]; the others are 0/1 already.
    return float(response["score"]) / 10 if source == JUDGMENTS else float(response["score"])


def _output_tokens(response: dict) -> int:
    if response.get("output_tokens") is not None:
        return int(response["output_tokens"])
    return estimate_tokens(response.get("answer") or "")


def load_source(folder: str | Path, splits: Sequence[str] = ("train",), models: Sequence[str] | None = None,
                portfolio: str | Path = PORTFOLIO) -> RouterDataset:
    """The rows of ``splits`` over the priced models that score every row of the train split.

    ``models`` fixes the portfolio (for example to read validation with exactly the models the
    router was trained on); a named model without a price is refused.
    """
    folder = Path(folder)
    source = source_name(folder)
    prices, unpriced = source_prices(folder, portfolio)
    train_rows = _split_rows(folder, "train")
    if models is None:
        # A model scored on only some subtasks cannot be a start tier for every query, so it is left
        # out; a few unparsable judgments (router_judgments) only drop those rows.
        complete = [m for m in prices
                    if np.mean([_score(r["responses"].get(m), source) is not None for r in train_rows]) >= MIN_COVERAGE]
        incomplete = sorted(set(prices) - set(complete))
        models = complete
    else:
        missing = [m for m in models if m not in prices]
        if missing:
            raise ConfigError(f"models {missing} have no price in {source!r}; a router only routes among priced models")
        incomplete = []
    ids, inputs, tasks, row_splits, quality, cost = [], [], [], [], [], []
    for split in splits:
        for row in (train_rows if split == "train" else _split_rows(folder, split)):
            scores = [_score(row["responses"].get(m), source) for m in models]
            if any(s is None for s in scores):
                continue
            prompt_tokens = estimate_tokens(row["input"])
            ids.append(row["id"])
            inputs.append(row["input"])
            tasks.append(f"{source}/{row.get('subtask') or 'all'}")
            row_splits.append(split)
            quality.append(scores)
            cost.append([(prompt_tokens * prices[m].input_per_1m
                          + _output_tokens(row["responses"][m]) * prices[m].output_per_1m) / 1e6 for m in models])
    q = np.asarray(quality, dtype=np.float64).reshape(-1, len(models))
    c = np.asarray(cost, dtype=np.float64).reshape(-1, len(models))
    # Cheapest first by list price on a typical query, which does not depend on the rows read.
    def typical_price(k: int) -> tuple[float, str]:
        return prices[models[k]].input_per_1m + 2 * prices[models[k]].output_per_1m, models[k]

    order = sorted(range(len(models)), key=typical_price)
    ordered = [models[k] for k in order]
    return RouterDataset(
        ids, inputs, tasks, row_splits, ordered, q[:, order], c[:, order], {m: prices[m] for m in ordered},
        notes={"source": source, "models_without_price": unpriced, "priced_models_not_scored_on_every_row": incomplete},
    )


def check_splits_disjoint(*datasets: RouterDataset) -> int:
    """Raise if any row id is in two of the data sets; return how many prompt texts recur across them.

    The sources split by id, and MMLU-Pro holds a few questions twice under two ids, so an equal
    text in two splits is counted and reported, not refused.
    """
    seen: dict[str, int] = {}
    seen_text: dict[str, int] = {}
    shared_texts = 0
    for k, data in enumerate(datasets):
        for row_id, text in zip(data.ids, data.inputs):
            if seen.setdefault(row_id, k) != k:
                raise ConfigError(f"row {row_id!r} is in two splits")
            shared_texts += seen_text.setdefault(text, k) != k
    return shared_texts


def canonical_model(name: str) -> str:
    """One name for one model across sources (``Meta-Llama-3_1-8B-Instruct`` = ``Meta-Llama-3.1-8B-Instruct``).

    Gemini's ``-002`` releases are folded into their family name: a cross-source router can
    only carry what it learned about "gemini-1.5-pro" to a later build of it.
    """
    name = name.lower().replace("_", ".")
    return name[: -len("-002")] if name.endswith("-002") else name


def concat_sources(datasets: Sequence[RouterDataset], models: Sequence[str] | None = None) -> RouterDataset:
    """Rows of several sources under canonical model names.

    With ``models`` (canonical names), only rows scoring every one of them are kept; without,
    the union of the models, NaN where a source has no score (the router masks those labels).
    """
    renamed = []
    for data in datasets:
        names = [canonical_model(m) for m in data.models]
        prices = {canonical_model(m): p.model_copy(update={"name": canonical_model(m)}) for m, p in data.prices.items()}
        renamed.append((data, names, prices))
    require_all = models is not None
    if models is None:
        models = sorted({n for _, names, _ in renamed for n in names})
    prices: dict[str, ModelPrice] = {}
    for _, _, p in renamed:
        for name, price in p.items():
            prices.setdefault(name, price)
    ids, inputs, tasks, splits, quality, cost = [], [], [], [], [], []
    for data, names, _ in renamed:
        index = {n: k for k, n in enumerate(names)}
        q = np.full((len(data), len(models)), np.nan)
        c = np.full((len(data), len(models)), np.nan)
        for j, name in enumerate(models):
            if name in index:
                q[:, j], c[:, j] = data.quality[:, index[name]], data.cost[:, index[name]]
        keep = np.nonzero(~np.isnan(q).any(axis=1))[0] if require_all else np.arange(len(data))
        ids += [data.ids[i] for i in keep]
        inputs += [data.inputs[i] for i in keep]
        tasks += [data.tasks[i] for i in keep]
        splits += [data.splits[i] for i in keep]
        quality.append(q[keep])
        cost.append(c[keep])
    q_all, c_all = np.concatenate(quality), np.concatenate(cost)
    # Cheapest first, as every router here expects.
    order = np.argsort(np.nanmean(c_all, axis=0), kind="stable")
    return RouterDataset(ids, inputs, tasks, splits, [models[k] for k in order], q_all[:, order], c_all[:, order],
                         {models[k]: prices[models[k]] for k in order if models[k] in prices},
                         notes={"sources": [d.notes.get("source") for d in datasets]})
