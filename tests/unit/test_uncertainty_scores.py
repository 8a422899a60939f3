from __future__ import annotations

import math

import numpy as np
import pytest

from routenlp_ray import NotFittedError
from routenlp_ray.config import parse_config
from routenlp_ray.conformal import AnswerEvidence, ConformalCalibrator, get_uncertainty_score, topk_entropy
from routenlp_ray.conformal.answer_scorer import LearnedAnswerScorer
from routenlp_ray.conformal.selection import TaskScores
from routenlp_ray.engines import GenerationResult
from tests.conftest import small_config_dict


def test_topk_entropy_is_zero_when_one_token_holds_the_mass_and_one_when_flat() -> None:
    peaked = AnswerEvidence("a", [-0.0], [[0.0, -50.0, -50.0]])
    flat = AnswerEvidence("a", [-1.1], [[math.log(1 / 3)] * 3])
    assert topk_entropy(peaked) == pytest.approx(0.0, abs=1e-6)
    assert topk_entropy(flat) == pytest.approx(1.0)
    mixed = AnswerEvidence("ab", [-0.1, -0.7], [[0.0, -50.0], [math.log(0.5), math.log(0.5)]])
    assert topk_entropy(mixed) == pytest.approx(0.5, abs=1e-6)


def test_scores_are_none_without_the_evidence_they_need() -> None:
    bare = AnswerEvidence("text only")
    for name in ("mean_nll", "max_nll", "one_minus_min_prob", "topk_entropy"):
        assert get_uncertainty_score(name)(bare) is None
    with pytest.raises(ValueError, match="unknown uncertainty score 'nope'.*learned"):
        get_uncertainty_score("nope")


def test_evidence_from_a_generation_result_and_a_record() -> None:
    result = GenerationResult("x", [-0.5], 3, 1, 1.0, top_logprobs=[[-0.5, -1.0]])
    evidence = AnswerEvidence.from_result(result, task="t", query="q")
    assert (evidence.text, evidence.top_logprobs, evidence.task, evidence.query) == ("x", [[-0.5, -1.0]], "t", "q")
    row = {"text": "y", "token_logprobs": [-1.0], "task": "t"}
    assert get_uncertainty_score("mean_nll")(AnswerEvidence.from_record(row, "q")) == pytest.approx(1.0)


class BagOfWords:
    """A tiny stand-in encoder: one dimension per vocabulary word."""

    vocabulary = ["card", "loan", "arrival", "rate", "refund", "broken", "?", "sorry"]

    def encode(self, texts):
        return np.array([[float(w in t.split()) for w in self.vocabulary] for t in texts])


def _answers(n: int, seed: int = 0):
    # Right answers echo the query's topic word; wrong ones say "sorry".
    rng = np.random.default_rng(seed)
    evidence, correct = [], []
    for _ in range(n):
        topic = rng.choice(["card", "loan"])
        right = rng.random() < 0.6
        text = f"{topic} arrival" if right else "sorry ?"
        evidence.append(AnswerEvidence(text, task="cs_intent", query=f"my {topic} ?"))
        correct.append(right)
    return evidence, np.array(correct)


def test_learned_scorer_ranks_wrong_answers_as_more_uncertain(tmp_path) -> None:
    evidence, correct = _answers(200)
    scorer = LearnedAnswerScorer(encoder=BagOfWords()).fit(evidence, correct)
    test_evidence, test_correct = _answers(100, seed=1)
    u = scorer.score(test_evidence)
    assert u[~test_correct].min() > u[test_correct].max()
    assert scorer.predict_proba(test_evidence).shape == (100, 2)
    loaded = LearnedAnswerScorer.load(scorer.save(tmp_path / "scorer"), encoder=BagOfWords())
    np.testing.assert_allclose(loaded.score(test_evidence), u)
    # An unseen task falls back to the unknown-task column instead of failing.
    assert 0 <= loaded(AnswerEvidence("card arrival", task="other", query="card ?")) <= 1


def test_learned_scorer_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(NotFittedError, match="call fit"):
        LearnedAnswerScorer(encoder=BagOfWords()).score([AnswerEvidence("x")])
    evidence, _ = _answers(10)
    with pytest.raises(ValueError, match="both right and wrong"):
        LearnedAnswerScorer(encoder=BagOfWords()).fit(evidence, [True] * 10)
    with pytest.raises(ValueError, match="10 answers but 3 labels"):
        LearnedAnswerScorer(encoder=BagOfWords()).fit(evidence, [True, False, True])
    from routenlp_ray import ArtifactError

    with pytest.raises(ArtifactError, match="incomplete"):
        LearnedAnswerScorer.load(tmp_path / "missing")


def test_calibrator_fits_a_learned_score_then_conformalizes_on_other_data(tmp_path) -> None:
    train, train_correct = _answers(200)
    calib, calib_correct = _answers(300, seed=2)
    calibrator = ConformalCalibrator(alpha=0.1, score=LearnedAnswerScorer(encoder=BagOfWords()))
    calibrator.fit(train, train_correct)
    u = calibrator.uncertainty(calib)
    calibrator.conformalize(u, calib_correct, ["cheap"] * 300, ["cs_intent"] * 300)
    table = calibrator.save(tmp_path / "t.json", version="v-learned")
    assert table.score == "learned" and table.get("cheap", "cs_intent") is not None
    reloaded = ConformalCalibrator.load(tmp_path / "t.json")
    np.testing.assert_array_equal(
        reloaded.predict(u, ["cheap"] * 300, ["cs_intent"] * 300), calibrator.predict(u, ["cheap"] * 300, ["cs_intent"] * 300)
    )
    # Wrong answers are turned away: the learned score separates them on this toy data.
    accepted = calibrator.predict(u, ["cheap"] * 300, ["cs_intent"] * 300)
    assert not accepted[~calib_correct].any() and accepted[calib_correct].mean() >= 0.9


def test_learned_score_in_config_requires_its_artifact(tmp_path, replay_file) -> None:
    from routenlp_ray import ConfigError

    with pytest.raises(ConfigError, match="answer_scorer_path is required.*cs_intent"):
        parse_config(small_config_dict(tmp_path, replay_file, cascade={"uncertainty_per_task": {"cs_intent": "learned"}}))
    evidence, correct = _answers(50)
    folder = LearnedAnswerScorer(encoder=BagOfWords()).fit(evidence, correct).save(tmp_path / "s")
    config = parse_config(small_config_dict(
        tmp_path, replay_file,
        cascade={"uncertainty_per_task": {"cs_intent": "learned"}, "answer_scorer_path": str(folder)},
    ))
    scores = TaskScores(config.cascade)
    assert isinstance(scores.for_task("cs_intent"), LearnedAnswerScorer)
    assert scores.for_task("chat") is get_uncertainty_score("mean_nll")
