"""The router's fit entry point, its baselines and the routing benchmark, on small slices.

The prompts are synthetic: a query holding "hard" words defeats the cheap model, and one with
several defeats the mid model too, so a router that reads the prompt has something to learn.
The encoder is a hashing bag of words (a unit test's collaborator); the real encoders are
exercised by the CPU test of ``routenlp bench routing``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from routenlp_ray import ConfigError
from routenlp_ray.bench import routing_bench
from routenlp_ray.cli import main
from routenlp_ray.routing.data import (
    JUDGMENTS,
    check_splits_disjoint,
    concat_sources,
    load_source,
)
from routenlp_ray.routing.fit import FitSettings, UtilityRouter, fit_router
from routenlp_ray.routing.learned_policy import RouterStartPolicy
from tests.conftest import DATA_DIR

HARD = ["integral", "eigenvalue", "proof", "lemma", "tensor"]
EASY = ["apple", "walk", "blue", "chair", "river", "song", "bread", "cloud"]
SMALL = FitSettings(epochs=30, hidden_dim=32, task_dim=4, model_dim=8)


class HashingEncoder:
    """Bag of words hashed into 64 dimensions, unit norm."""

    kind = "hashing-test"
    model_source = "none"
    dim = 64

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def _rows(split: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        n_hard = int(rng.choice([0, 0, 1, 2, 3]))
        words = list(rng.choice(EASY, 6)) + list(rng.choice(HARD, n_hard))
        rng.shuffle(words)
        noisy = rng.random(3) < 0.05
        correct = np.array([n_hard == 0, n_hard <= 1, rng.random() < 0.95]) ^ noisy
        rows.append({
            "id": f"{split}-{i}", "subtask": ["alpha", "beta"][i % 2], "split": split, "input": " ".join(words),
            "responses": {
                "cheap": {"score": float(correct[0]), "output_tokens": 50},
                "mid": {"score": float(correct[1]), "output_tokens": 60},
                "strong": {"score": float(correct[2]), "output_tokens": 80},
                "free_beta": {"score": 1.0, "output_tokens": 10},
            },
        })
    return rows


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "router_toy"
    folder.mkdir()
    for split, n, seed in (("train", 400, 0), ("validation", 150, 1), ("test", 120, 2)):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(split, n, seed)) + "\n")
    prices = {"cheap": (0.1, 0.2), "mid": (1.0, 2.0), "strong": (10.0, 30.0)}
    meta = {m: {"input_usd_per_1m": p[0], "output_usd_per_1m": p[1]} for m, p in prices.items()}
    meta["free_beta"] = {"input_usd_per_1m": None, "output_usd_per_1m": None}
    (folder / "models.json").write_text(json.dumps(meta))
    return folder


def test_only_priced_models_are_routed_and_an_unpriced_one_is_refused(source: Path) -> None:
    train = load_source(source)
    assert train.models == ["cheap", "mid", "strong"]
    assert train.notes["models_without_price"] == ["free_beta"]
    with pytest.raises(ConfigError, match=r"\['free_beta'\] have no price"):
        load_source(source, ["validation"], models=["cheap", "free_beta"])
    train.prices.pop("mid")
    with pytest.raises(ConfigError, match=r"model\(s\) \['mid'\] have no price"):
        fit_router(train, HashingEncoder().encode(train.inputs), settings=SMALL)


def test_splits_are_disjoint(source: Path) -> None:
    train, val = load_source(source), load_source(source, ["validation"])
    assert check_splits_disjoint(train, val) == 0
    with pytest.raises(ConfigError, match="in two splits"):
        check_splits_disjoint(train, train.subset([0, 1]))


def test_shared_sources_splits_are_disjoint() -> None:
    if not (DATA_DIR / JUDGMENTS / "train.jsonl").is_file():
        pytest.skip(f"router data not found at {DATA_DIR}")
    for name in ("router_zeroeval", "router_mmlu_pro", JUDGMENTS):
        train = load_source(DATA_DIR / name)
        val = load_source(DATA_DIR / name, ["validation"], models=train.models)
        check_splits_disjoint(train, val)
        assert len(train) > len(val) > 0
    # router_judgments' validation is a fixed hashed part of its train split, the same every time.
    again = load_source(DATA_DIR / JUDGMENTS, ["validation"])
    assert again.ids == load_source(DATA_DIR / JUDGMENTS, ["validation"]).ids


def test_fit_takes_train_rows_only(source: Path) -> None:
    both = load_source(source, ["train", "validation"])
    with pytest.raises(ConfigError, match=r"train rows only; got rows from split\(s\) \['validation'\]"):
        fit_router(both, HashingEncoder().encode(both.inputs), settings=SMALL)


def test_settings_never_depend_on_the_evaluated_split(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fit sees train rows only, and scrambling the validation labels changes no setting."""
    seen_splits: set[str] = set()
    real_fit = routing_bench.fit_router

    def spy(data, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen_splits.update(data.splits)
        return real_fit(data, *args, **kwargs)

    monkeypatch.setattr(routing_bench, "fit_router", spy)
    encoder = HashingEncoder()
    train, val = load_source(source), load_source(source, ["validation"])
    X_train, X_val = encoder.encode(train.inputs), encoder.encode(val.inputs)
    first = routing_bench.evaluate(train, X_train, val, X_val, seed=0, settings=SMALL)
    scrambled = val.subset(np.arange(len(val)))
    scrambled.quality = np.random.default_rng(9).permutation(val.quality)
    second = routing_bench.evaluate(train, X_train, scrambled, X_val, seed=0, settings=SMALL)
    assert seen_splits == {"train"}
    for name, policy in first["policies"].items():
        if "at_chosen_setting_95" in policy:
            for pct in (95, 99):
                assert policy[f"at_chosen_setting_{pct}"]["setting"] == \
                    second["policies"][name][f"at_chosen_setting_{pct}"]["setting"], name
        for key in ("head", "k", "weak"):
            assert policy.get(key) == second["policies"][name].get(key)


def test_every_policy_trains_on_a_small_slice_and_the_router_learns(source: Path) -> None:
    encoder = HashingEncoder()
    train, val = load_source(source), load_source(source, ["validation"])
    result = routing_bench.evaluate(train, encoder.encode(train.inputs), val, encoder.encode(val.inputs), seed=1,
                                    settings=SMALL)
    policies = result["policies"]
    assert {"router", "router_per_model_head", "router_model_embedding_head", "knn", "routellm_mf",
            "routellm_mf_pairwise", "binary_winrate", "random", "single_models", "oracle"} <= set(policies)
    for name, entry in policies.items():
        assert 0.0 <= entry["auc"] <= 1.0, name
    # The prompt decides which model succeeds, so reading it beats routing at random.
    assert policies["router"]["auc"] > policies["random"]["auc"]
    assert policies["knn"]["auc"] > policies["random"]["auc"]
    assert policies["oracle"]["auc"] >= policies["router"]["auc"]
    assert set(result["calibration"]) == {"cheap", "mid", "strong"}
    assert all(0 <= c["ece"] <= 1 for c in result["calibration"].values())


def test_fitted_router_round_trips_with_identical_decisions(source: Path, tmp_path: Path) -> None:
    encoder = HashingEncoder()
    train, val = load_source(source), load_source(source, ["validation"])
    router = fit_router(train, encoder.encode(train.inputs), settings=SMALL, seed=3)
    X_val = encoder.encode(val.inputs)
    loaded = UtilityRouter.load(router.save(tmp_path / "utility"))
    np.testing.assert_array_equal(router.decide(X_val, val.tasks), loaded.decide(X_val, val.tasks))
    assert loaded.lam == router.lam and loaded.report["head"] in ("per_model", "model_embedding")

    # The serving artifact: the same decisions through RouterStartPolicy's save/load.
    policy = RouterStartPolicy.from_utility_router(router, encoder=encoder, version="toy-1")
    served = RouterStartPolicy.load(policy.save(tmp_path / "policy"), encoder=encoder)
    assert served.rule == "utility" and served.encoder_kind == "hashing-test"
    expected = [router.models[i] for i in router.decide(X_val, val.tasks)]
    assert served.decide_batch(val.inputs, val.tasks) == expected
    assert served.start_tier(val.tasks[0], val.inputs[0], router.models) == expected[0]


def test_cross_source_concat_keeps_rows_scoring_every_shared_model(source: Path) -> None:
    train = load_source(source)
    joined = concat_sources([train], ["cheap", "strong"])
    assert joined.models == ["cheap", "strong"] and len(joined) == len(train)
    union = concat_sources([train.with_models(["cheap"]), train.with_models(["mid", "strong"])])
    assert np.isnan(union.quality).sum() == 2 * len(train) + len(train)


def test_bench_routing_runs_unchanged_on_a_test_split(source: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--split test`` reads test.jsonl once and trains on train.jsonl, as on the held-out data."""
    monkeypatch.setattr("routenlp_ray.models.static_encoder.StaticEncoder", lambda *a, **k: HashingEncoder())
    monkeypatch.setenv("ROUTENLP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report.json"
    assert main(["bench", "routing", "--data", str(source), "--split", "test", "--seeds", "2", "--epochs", "5",
                 "--latency-queries", "50", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    row = report["sources"]["router_toy"]
    assert report["split"] == "test" and row["evaluated_rows"] == 120 and row["train_rows"] == 400
    assert row["summary"]["router"]["auc"]["n"] == 2
    assert out.with_suffix(".md").read_text().startswith("# Start-tier routing benchmark (test)")
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["decision_latency"]["batched_decisions_per_s"] > 0
    with pytest.raises(SystemExit):
        main(["bench", "routing", "--data", str(source), "--split", "train", "--out", str(out)])
