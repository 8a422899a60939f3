"""The specialist loop experiment's pieces on tiny synthetic slices (no encoder, no network)."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp_ray.bench.loop_specialist import (
    Answers,
    Query,
    bootstrap_ratio,
    build_students,
    cascade_outcome,
    evaluate_student,
    select_clusters,
    split_pool,
    split_validation,
)
from routenlp_ray.loop.mining import Failure


def _query(i: int, task: str = "cs_intent") -> Query:
    return Query(id=f"q{i}", task=task, input=f"text {i}", reference=f"label_{i % 3}", answer=f"label_{i % 3}",
                 specialist_cost=1e-9, frontier_cost=1e-5)


def _failure(q: Query) -> Failure:
    return Failure(query_id=q.id, task=q.task, input=q.input, reason="escalated", failed_tiers=("specialist",),
                   target_tier="frontier", answered_by="frontier", escalation_cost_usd=q.frontier_cost,
                   teacher_answer=q.answer)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_seed_calibration_and_traffic_parts_are_disjoint_and_cover_the_pool(seed: int) -> None:
    parts = split_pool(100, seed, seed_share=0.3, calibration_share=0.2, min_traffic=40)
    seen = np.concatenate(list(parts.values()))
    assert sorted(seen.tolist()) == list(range(100))
    assert (len(parts["seed"]), len(parts["calibration"]), len(parts["traffic"])) == (30, 20, 50)
    # Another seed changes which rows are the base's.
    other = split_pool(100, seed + 1, 0.3, 0.2, 40)
    assert set(parts["seed"].tolist()) != set(other["seed"].tolist())


def test_a_pool_too_small_for_the_traffic_fails_naming_the_numbers() -> None:
    with pytest.raises(ValueError, match="leaves 50 traffic queries.*at least 300"):
        split_pool(100, 0, 0.3, 0.2, min_traffic=300)


def test_validation_halves_are_disjoint_and_complete() -> None:
    calibration, evaluation = split_validation(51, seed=3)
    assert not set(calibration.tolist()) & set(evaluation.tolist())
    assert sorted(np.concatenate([calibration, evaluation]).tolist()) == list(range(51))


def test_select_clusters_covers_the_asked_share_of_cost_with_the_costliest_first() -> None:
    costs = [5.0, 3.0, 1.0, 1.0]  # shares 0.5, 0.3, 0.1, 0.1
    assert select_clusters(costs, 0.25) == 1
    assert select_clusters(costs, 0.5) == 1
    assert select_clusters(costs, 0.75) == 2
    assert select_clusters(costs, 1.0) == 4
    assert select_clusters([], 0.5) == 0


def test_targeted_set_comes_only_from_selected_clusters_and_untargeted_has_its_size() -> None:
    traffic = [_query(i) for i in range(40)]
    failed = traffic[:20]
    failures = [_failure(q) for q in failed] + [_failure(failed[0])]  # a repeated query counts once
    labels = np.array([i % 4 for i in range(20)] + [0])
    targeted, untargeted = build_students(failures, labels, selected=[0, 2], traffic=traffic, seed=0)
    chosen = {q.input for q, label in zip(failed, labels) if label in (0, 2)}
    assert {q.input for q in targeted} == chosen
    assert len(targeted) == len(chosen) == 10
    assert len(untargeted) == len(targeted)
    assert len({q.id for q in untargeted}) == len(untargeted)
    assert {q.id for q in untargeted} <= {q.id for q in traffic}
    # Drawn from all traffic, not only the failures.
    _, other = build_students(failures, labels, [0, 2], traffic, seed=1)
    assert {q.id for q in untargeted} != {q.id for q in other}


def test_cascade_accepts_within_threshold_and_skips_a_tier_with_none() -> None:
    u = np.array([0.1, 0.5, np.nan])
    spec_q, spec_c = np.array([1.0, 0.0, 1.0]), np.full(3, 0.01)
    front_q, front_c = np.ones(3), np.ones(3)
    accepted, cost, quality = cascade_outcome(u, 0.2, spec_q, spec_c, front_q, front_c)
    assert accepted.tolist() == [True, False, False]
    np.testing.assert_allclose(cost, [0.01, 1.01, 1.01])
    np.testing.assert_allclose(quality, [1.0, 1.0, 1.0])
    accepted, cost, _ = cascade_outcome(u, None, spec_q, spec_c, front_q, front_c)
    assert not accepted.any() and cost.tolist() == [1.0, 1.0, 1.0]


def _answers(u: np.ndarray, correct: np.ndarray) -> Answers:
    return Answers(u, correct.astype(float), correct, ["x"] * len(u))


def test_thresholds_are_recalibrated_per_student_on_the_calibration_half_only() -> None:
    rng = np.random.default_rng(0)
    n = 400
    eval_queries = {"cs_intent": [_query(i) for i in range(n)]}
    frontier = {"cs_intent": np.ones(n)}
    budgets = {"cs_intent": 0.04}
    u = rng.uniform(0, 1, n)

    # A weak student is wrong where it is unsure; a strong one only at the very top.
    weak = _answers(u, u < 0.4)
    strong = _answers(u, u < 0.9)
    evaluation = {"cs_intent": _answers(rng.uniform(0, 1, n), np.ones(n, dtype=bool))}
    t_weak = evaluate_student({"cs_intent": weak}, evaluation, eval_queries, frontier, budgets, 0.1)
    t_strong = evaluate_student({"cs_intent": strong}, evaluation, eval_queries, frontier, budgets, 0.1)
    thr_weak, thr_strong = t_weak["cs_intent"].thresholds["cs_intent"], t_strong["cs_intent"].thresholds["cs_intent"]
    assert thr_weak is not None and thr_strong is not None
    assert thr_strong > thr_weak  # each student's own calibration answers set its threshold

    # The evaluation half never moves a threshold; it is only read with it.
    flipped = {"cs_intent": _answers(rng.uniform(0, 1, n), np.zeros(n, dtype=bool))}
    again = evaluate_student({"cs_intent": weak}, flipped, eval_queries, frontier, budgets, 0.1)
    assert again["cs_intent"].thresholds == t_weak["cs_intent"].thresholds
    assert t_weak["cs_intent"].accepted.tolist() == (evaluation["cs_intent"].uncertainty <= thr_weak).tolist()


def test_bootstrap_ratio_recovers_a_known_ratio() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(5):
        frontier = np.ones(300)
        base = frontier.copy()
        base[:60] = 0.0  # base saves 20%
        targeted, untargeted = base.copy(), base.copy()
        targeted[60:120] = 0.0  # +20 points
        untargeted[60:90] = 0.0  # +10 points
        perm = rng.permutation(300)
        rows.append({"base": base[perm], "targeted": targeted[perm], "untargeted": untargeted[perm],
                     "frontier": frontier})
    out = bootstrap_ratio(rows, reps=300)
    low, high = out["ratio_ci95"]
    assert low < 2.0 < high and low > 1.2
    assert out["difference_ci95"][0] > 0


def test_bootstrap_ratio_reads_every_draw_as_the_pilot_does() -> None:
    # Untargeted saves nothing over base: no draw has a finite ratio, and none is dropped.
    rows = []
    for _ in range(3):
        frontier = np.ones(50)
        base = frontier.copy()
        targeted = base.copy()
        targeted[:10] = 0.0
        rows.append({"base": base, "targeted": targeted, "untargeted": base.copy(), "frontier": frontier})
    out = bootstrap_ratio(rows, reps=200)
    assert out["ratio_ci95"] == ["inf", "inf"] and out["ratio_ci_rule"] == "all_draws"
    assert out["untargeted_at_most_zero_share"] == 1.0 and out["difference_ci95"][0] > 0
    # Both save nothing: every draw counts against targeting.
    for row in rows:
        row["targeted"] = row["base"].copy()
    assert bootstrap_ratio(rows, reps=200)["ratio_ci95"] == ["-inf", "-inf"]


def test_cached_bertscore_is_the_tasks_bertscore() -> None:
    from routenlp_ray.bench.loop_specialist import CachedBertScore
    from routenlp_ray.tasks.bertscore import bertscore_f1

    predictions = ["I can help you cancel order 123.", "Please reset your password from the login page.", " "]
    references = ["Sure, I will cancel the order 123 for you.", "Your refund is on its way.", "anything"]
    cached = CachedBertScore()
    assert [cached.f1(p, r) for p, r in zip(predictions, references)] == pytest.approx(
        bertscore_f1(predictions, references), abs=1e-5
    )
    assert cached.f1("same words here", "same words here") == pytest.approx(1.0)


def test_cached_encoder_gives_the_encoders_own_vectors() -> None:
    from routenlp_ray.bench.loop_specialist import CachedEncoder
    from routenlp_ray.specialists import SpecialistEncoder

    texts = ["my card has not arrived", "refund please", "my card has not arrived"]
    cached, plain = CachedEncoder(num_threads=1), SpecialistEncoder(num_threads=1)
    np.testing.assert_allclose(cached.encode(texts), plain.encode(texts), atol=1e-6)
    np.testing.assert_allclose(cached.encode(texts[:1]), plain.encode(texts[:1]), atol=1e-6)
    words = "Apple Inc . bought Beats".split()
    for got, want in zip(cached.word_features(words), plain.word_features(words)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # A caller that edits the returned features must not change the cache.
    cached.word_features(words)[0][:] = 0
    assert np.abs(cached.word_features(words)[0]).sum() > 0


def test_a_label_head_with_lexical_features_answers_the_experiments_queries() -> None:
    from routenlp_ray.bench.loop_specialist import answer_queries
    from routenlp_ray.specialists import LabelSpecialist, SpecialistEncoder

    texts = [f"please {verb} my {thing}" for verb in ("assign", "terminate")
             for thing in ("contract", "agreement", "deal", "licence", "lease", "order")]
    labels = ["Anti-Assignment"] * 6 + ["Termination"] * 6
    head = LabelSpecialist(SpecialistEncoder(num_threads=1), Cs=[100.0], lexical_features=50).fit(texts, labels)
    queries = [Query(id=f"q{i}", task="legal_clause", input=t, reference=label, answer=label,
                     specialist_cost=1e-9, frontier_cost=1e-5)
               for i, (t, label) in enumerate([("please assign my contract", "Anti-Assignment"),
                                               ("please terminate my lease", "Termination")])]

    def exact(task, predictions, references):  # the task metric is a collaborator here
        return np.array([float(p == r) for p, r in zip(predictions, references)])

    answers = answer_queries(head, "label", queries, "mean_nll", exact, bar=1.0)
    assert answers.texts == ["Anti-Assignment", "Termination"] and answers.correct.all()
    assert (answers.uncertainty >= 0).all()
