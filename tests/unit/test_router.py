from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from routenlp_ray import ArtifactError, NotFittedError
from routenlp_ray.routing.learned_policy import RouterStartPolicy, choose_targets, start_indices
from routenlp_ray.routing.router import DifficultyRouter

TIERS = ["small", "medium", "large"]


def synthetic(n: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Queries with a hidden difficulty in [0, 1]; tier k succeeds when difficulty < its capacity.

    Task "hard" shifts every query's difficulty up, so the task embedding has to matter.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 16)).astype(np.float32)
    direction = np.linspace(-1, 1, 16)
    tasks = rng.choice(["easy", "hard"], size=n).tolist()
    difficulty = 1 / (1 + np.exp(-(X @ direction) / 2)) + 0.25 * (np.array(tasks) == "hard")
    capacity = np.array([0.45, 0.75, 2.0])
    y = (difficulty[:, None] < capacity[None, :]).astype(np.float32)
    flip = rng.random(y.shape) < 0.05
    y[flip] = 1 - y[flip]
    return X, tasks, y, difficulty


def test_router_recovers_known_difficulty() -> None:
    X, tasks, y, _ = synthetic(3000, seed=0)
    router = DifficultyRouter(TIERS, epochs=40, random_state=0).fit(X, tasks, y)
    X_test, tasks_test, y_test, difficulty = synthetic(1000, seed=1)
    proba = router.predict_proba(X_test, tasks_test)
    assert proba.shape == (1000, 3)
    for k in (0, 1):
        assert roc_auc_score(y_test[:, k], proba[:, k]) > 0.9
    # Expected number of failing tiers is the router's difficulty estimate.
    assert spearmanr((1 - proba).sum(axis=1), difficulty).statistic > 0.8
    # The task embedding carries the shift: the same query looks harder under "hard".
    assert proba[:, 0].mean() > router.predict_proba(X_test, ["hard"] * 1000)[:, 0].mean()
    assert router.loss_curve_[-1] < router.loss_curve_[0]


def test_missing_labels_are_masked_and_pairs_train_the_ordering() -> None:
    X, tasks, y, difficulty = synthetic(1500, seed=2)
    y_missing = y.copy()
    y_missing[::2, 1] = np.nan
    rows = np.arange(len(X))
    pairs = np.stack([rows, np.full_like(rows, 2), np.zeros_like(rows)], axis=1)  # large beats small everywhere
    router = DifficultyRouter(TIERS, epochs=30, pairwise_weight=1.0).fit(X, tasks, y_missing, pairs=pairs)
    proba = router.predict_proba(X, tasks)
    assert np.isfinite(proba).all()
    assert (proba[:, 2] >= proba[:, 0]).mean() > 0.95


def test_save_and_load_give_identical_predictions(tmp_path: Path) -> None:
    X, tasks, y, _ = synthetic(500, seed=3)
    router = DifficultyRouter(TIERS, epochs=5).fit(X, tasks, y)
    router.save(tmp_path / "router", metadata={"trained_on": "synthetic"})
    loaded = DifficultyRouter.load(tmp_path / "router")
    np.testing.assert_array_equal(router.predict_proba(X, tasks), loaded.predict_proba(X, tasks))
    assert loaded.metadata_ == {"trained_on": "synthetic"} and loaded.tiers == TIERS
    assert loaded.predict_proba(X[:2], ["never-seen-task"] * 2).shape == (2, 3)  # unknown tasks use the prior


def test_misuse_is_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="call fit before predict_proba"):
        DifficultyRouter(TIERS).predict_proba(np.zeros((1, 4)), ["t"])
    with pytest.raises(ValueError, match=r"y of shape \(n, 3\)"):
        DifficultyRouter(TIERS).fit(np.zeros((4, 2)), ["t"] * 4, np.zeros((4, 2)))
    with pytest.raises(ArtifactError, match="incomplete"):
        DifficultyRouter.load(tmp_path)


def test_start_index_is_the_cheapest_tier_clearing_the_target() -> None:
    proba = np.array([[0.9, 0.95, 1.0], [0.2, 0.8, 1.0], [0.1, 0.2, 0.3]])
    assert start_indices(proba, [0.7, 0.7, 0.7]).tolist() == [0, 1, 2]


def test_targets_keep_quality_at_the_lowest_cost() -> None:
    proba = np.array([[0.9, 1, 1], [0.6, 1, 1], [0.3, 1, 1], [0.1, 1, 1]], dtype=float)
    correct = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]], dtype=float)
    cost = np.array([[1, 5, 10]] * 4, dtype=float)
    # Starting at "small" is fine for the two rows with p >= 0.6; lower targets lose quality.
    targets = choose_targets(proba, correct, cost, ["t"] * 4, {"t": 1.0}, grid=[0.05, 0.3, 0.6, 0.9])
    assert targets == {"t": 0.6}
    # When only the frontier is ever right, no target keeps quality: everything starts there.
    only_frontier = np.array([[0, 0, 1]] * 4, dtype=float)
    assert choose_targets(proba, only_frontier, cost, ["t"] * 4, {"t": 1.0}) == {"t": 1.01}


class FakeEncoder:
    """Stands in for MiniLM: a fixed embedding per text."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode_one(self, text: str) -> np.ndarray:
        return self.table[text]

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])


def test_policy_round_trip_picks_tiers(tmp_path: Path) -> None:
    X, tasks, y, difficulty = synthetic(2000, seed=4)
    router = DifficultyRouter(TIERS, epochs=30).fit(X, tasks, y)
    easy, hard = X[np.argmin(difficulty)], X[np.argmax(difficulty)]
    encoder = FakeEncoder({"easy query": easy, "hard query": hard})
    policy = RouterStartPolicy(router, targets={"easy": 0.5}, default_target=0.5, encoder=encoder, version="r1")
    policy.save(tmp_path / "policy")
    loaded = RouterStartPolicy.load(tmp_path / "policy", encoder=encoder)
    assert loaded.version == "r1"
    assert loaded.start_tier("easy", "easy query", TIERS) == "small"
    assert loaded.start_tier("hard", "hard query", TIERS) == "large"
    assert loaded.start_tier("easy", "easy query", ["medium", "large"]) == "medium"  # router's pick is gone
    assert loaded.decide_batch(["easy query", "hard query"], ["easy", "hard"]) == ["small", "large"]


def test_encoder_keeps_input_order_when_batching_by_length() -> None:
    from routenlp_ray.models.encoder import SentenceEncoder

    texts = ["a much longer sentence about a lost bank card and a refund", "hi", "where is my card?"]
    exact = SentenceEncoder(quantize=False)
    together = exact.encode(texts, batch_size=2)
    np.testing.assert_allclose(together, np.stack([exact.encode_one(t) for t in texts]), atol=1e-4)
    assert together.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # The int8 encoder embeds one text at a time by default, so training matches serving exactly.
    quantized = SentenceEncoder()
    np.testing.assert_array_equal(quantized.encode(texts), np.stack([quantized.encode_one(t) for t in texts]))
    # Its embeddings stay close to the float ones (about 0.9 cosine for the shortest).
    assert (quantized.encode(texts) * together).sum(axis=1).min() > 0.85


def test_traced_encoder_gives_the_eager_embeddings_bit_for_bit() -> None:
    from routenlp_ray.models.encoder import SentenceEncoder

    # Lengths and wordings the load-time check never saw, one at a time (the int8 default) and padded together.
    texts = ["hi", "my top-up failed twice, why?", "Either party may terminate this Agreement upon thirty (30) days "
             "written notice if the other party materially breaches any provision and fails to cure it. " * 3]
    for quantize in (True, False):
        traced, eager = SentenceEncoder(quantize=quantize), SentenceEncoder(quantize=quantize, trace=False)
        assert traced.traced and not eager.traced
        np.testing.assert_array_equal(traced.encode(texts), eager.encode(texts))
        np.testing.assert_array_equal(traced.encode(texts, batch_size=3), eager.encode(texts, batch_size=3))


def test_encoder_stays_eager_when_its_trace_is_not_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from routenlp_ray.models.encoder import SentenceEncoder

    real_trace = torch.jit.trace

    def off_by_a_little(module, inputs, **kwargs):  # type: ignore[no-untyped-def]
        traced = real_trace(module, inputs, **kwargs)
        return lambda *args: traced(*args) + 1e-6

    monkeypatch.setattr(torch.jit, "trace", off_by_a_little)
    assert not SentenceEncoder().traced
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no tracing")))
    encoder = SentenceEncoder()
    assert not encoder.traced and encoder.encode(["where is my card?"]).shape == (1, 384)


def test_encoder_workers_run_batches_side_by_side_with_the_same_embeddings() -> None:
    from routenlp_ray.models.encoder import SentenceEncoder

    texts = [f"where is card number {i}? it has not arrived after {i} days" * (1 + i % 3) for i in range(12)]
    alone, together = SentenceEncoder(), SentenceEncoder(workers=2)
    assert together.workers == 2
    np.testing.assert_array_equal(together.encode(texts), alone.encode(texts))
    np.testing.assert_array_equal(together.encode(texts, batch_size=4), alone.encode(texts, batch_size=4))
    assert together.encode([]).shape == (0, 384)
