from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routenlp_ray import NotFittedError
from routenlp_ray.config import parse_config
from routenlp_ray.loop.mining import (
    Failure,
    FailureClusterer,
    find_failures,
    mine,
    price_gap_from_config,
    rank_clusters,
    teacher_examples,
    teacher_examples_async,
    write_cluster_report,
)
from routenlp_ray.telemetry import QueryLog, read_records
from tests.conftest import small_config_dict

# USD per token of the two tiers in small_config_dict: cheap 0.1 / 0.2, frontier 2.5 / 10 per 1M.
PRICE = {"cheap": (0.1e-6, 0.2e-6), "frontier": (2.5e-6, 10e-6)}
LONG_CARD = "my card was declined again " * 12  # 324 characters, shown truncated in the report


def usd(tier: str, prompt: int, completion: int) -> float:
    return prompt * PRICE[tier][0] + completion * PRICE[tier][1]


def attempt(tier: str, status: str, prompt: int = 0, completion: int = 0) -> dict[str, Any]:
    return {
        "tier": tier, "status": status, "uncertainty": None, "threshold": None, "prompt_tokens": prompt,
        "completion_tokens": completion, "cost_usd": usd(tier, prompt, completion), "latency_ms": 1.0, "error": None,
    }


def query(qid: str, task: str, text: str, attempts: list[dict[str, Any]], answered_by: str | None, **extra: Any):
    final = next((a for a in attempts if a["tier"] == answered_by and a["prompt_tokens"]), None)
    record = {
        "id": qid, "ts": f"2026-01-01T00:00:{int(qid[1:]):02d}+00:00", "endpoint": "chat", "task": task,
        "status": "ok" if answered_by else "failed", "input": text, "request": {}, "start_tier": attempts[0]["tier"],
        "answered_by": answered_by, "fallback": False, "attempts": attempts,
        "answer": f"answer to {qid}" if answered_by else None, "token_logprobs": None,
        "prompt_tokens": final["prompt_tokens"] if final else 0,
        "completion_tokens": final["completion_tokens"] if final else 0,
        "cost_usd": sum(a["cost_usd"] for a in attempts), "frontier_cost_usd": 0.0, "saved_usd": 0.0,
        "latency_ms": 2.0, "thresholds_version": "t", "policy_version": "p", "error": None,
    }
    record.update(extra)
    return record


def verdict(response_id: str, second: int, accepted: bool | None = None, score: float | None = None) -> dict[str, Any]:
    return {
        "id": f"fb-{response_id}-{second}", "ts": f"2026-01-01T00:01:{second:02d}+00:00", "response_id": response_id,
        "accepted": accepted, "score": score, "comment": None, "source": "test", "matched": True, "task": None,
        "answered_by": None,
    }


QUERIES = [
    # Topic "card" (cs_intent): three failures.
    query("q1", "cs_intent", "where is my new card?", [attempt("cheap", "escalated", 100, 10),
                                                       attempt("frontier", "accepted", 100, 20)], "frontier"),
    query("q2", "cs_intent", LONG_CARD, [attempt("cheap", "timeout"), attempt("frontier", "accepted", 200, 10)],
          "frontier"),
    query("q3", "cs_intent", "card never arrived", [attempt("cheap", "accepted", 100, 10)], "cheap"),
    # Topic "loan" (chat): two failures, fewer but costlier.
    query("q4", "chat", "how do I apply for a loan", [attempt("cheap", "accepted", 50, 10)], "cheap"),
    query("q11", "chat", "is my loan interest rate too high", [attempt("cheap", "escalated", 50, 5),
                                                               attempt("frontier", "accepted", 50, 200)], "frontier"),
    # Not failures.
    query("q5", "chat", "loan approved, thanks", [attempt("cheap", "accepted", 50, 10)], "cheap"),
    query("q6", "chat", "hello", [attempt("cheap", "accepted", 10, 10)], "cheap"),
    query("q7", "chat", "card fine", [attempt("cheap", "accepted", 10, 10)], "cheap"),
    query("q8", "chat", "hard loan question", [attempt("frontier", "accepted", 10, 10)], "frontier"),
    query("q9", "chat", "all down", [attempt("cheap", "error"), attempt("frontier", "error")], None),
    query("q10", "chat", "frontier down", [attempt("cheap", "escalated", 10, 10), attempt("frontier", "error")],
          "cheap", fallback=True),
]
FEEDBACK = [
    verdict("q3", 1, accepted=False),
    verdict("q4", 2, score=0.2),
    verdict("q5", 3, accepted=False),
    verdict("q5", 9, accepted=True),  # the client changed its mind: the latest verdict wins
    verdict("q7", 4, score=0.9),
    verdict("q11", 5, accepted=False),  # the frontier's own answer was rejected: no teacher from the log
    verdict("q8", 6, accepted=False),  # frontier answers are no cheap-tier failure
]
CARD, LOAN = ["q1", "q2", "q3"], ["q4", "q11"]
# What each failure costs: the frontier's price minus the cheap tier's, per escalation.
COST = {
    "q1": usd("frontier", 100, 20) - usd("cheap", 100, 10),  # both logged
    "q2": usd("frontier", 200, 10) - usd("cheap", 200, 10),  # the timeout has no tokens: priced on the answer's
    "q3": usd("frontier", 100, 10) - usd("cheap", 100, 10),  # never reached the frontier: priced on the query
    "q4": usd("frontier", 50, 10) - usd("cheap", 50, 10),
    "q11": usd("frontier", 50, 200) - usd("cheap", 50, 5),
}


class TopicEncoder:
    """Puts each text on the axis of the first topic word it holds, with a small length-based wobble."""

    topics = ("card", "loan", "egg")

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = np.zeros((len(texts), len(self.topics) + 1))
        for i, text in enumerate(texts):
            axis = next((j for j, word in enumerate(self.topics) if word in text), 0)
            rows[i, axis] = 1.0
            rows[i, -1] = 0.02 * (len(text) % 5)
        return rows


@pytest.fixture()
def config(tmp_path: Path, replay_file: Path):
    return parse_config(small_config_dict(tmp_path, replay_file))


@pytest.fixture()
def log_uri(config) -> str:
    with QueryLog(config.storage) as log:
        for record in QUERIES:
            log.append_sync("queries", record)
        for record in FEEDBACK:
            log.append_sync("feedback", record)
    return config.storage.log_uri


@pytest.fixture()
def failures(log_uri: str) -> list[Failure]:
    return find_failures(read_records(log_uri, "queries"), read_records(log_uri, "feedback"), ["cheap"], "frontier")


def test_failures_are_escalations_and_rejected_cheap_answers(failures: list[Failure]) -> None:
    by_id = {f.query_id: f for f in failures}
    assert list(by_id) == ["q1", "q2", "q3", "q4", "q11"]
    assert {q: f.reason for q, f in by_id.items()} == {
        "q1": "escalated", "q2": "escalated", "q3": "negative_feedback", "q4": "negative_feedback", "q11": "escalated",
    }
    assert all(f.failed_tiers == ("cheap",) and f.target_tier == "frontier" for f in failures)
    # The escalation cost actually paid is what the tiers above the failed one charged.
    assert by_id["q1"].escalation_cost_usd == pytest.approx(usd("frontier", 100, 20))
    assert by_id["q2"].escalation_cost_usd == pytest.approx(usd("frontier", 200, 10))
    assert by_id["q3"].escalation_cost_usd == 0.0
    assert by_id["q1"].teacher_answer == "answer to q1" and by_id["q2"].teacher_answer == "answer to q2"
    assert by_id["q3"].teacher_answer is None  # the frontier never ran
    assert by_id["q11"].teacher_answer is None  # the frontier's answer was rejected
    assert by_id["q1"].text == "cs_intent: where is my new card?"


def test_frontier_cannot_be_a_cheap_tier() -> None:
    with pytest.raises(ValueError, match="frontier \\('frontier'\\) must not be one of the cheap tiers"):
        find_failures([], [], ["cheap", "frontier"], "frontier")


def test_clusterer_separates_two_topics(failures: list[Failure]) -> None:
    encoder = TopicEncoder()
    clusterer = FailureClusterer(encoder).fit(failures)
    labels = dict(zip((f.query_id for f in failures), clusterer.labels_.tolist()))
    assert clusterer.n_clusters_ == 2 and clusterer.centroids_.shape == (2, 4)
    assert len({labels[q] for q in CARD}) == 1 and len({labels[q] for q in LOAN}) == 1
    assert labels["q1"] != labels["q4"]
    assert max(clusterer.silhouette_, key=clusterer.silhouette_.get) == 2
    assert clusterer.predict(["chat: another loan", "cs_intent: card lost"]).tolist() == [labels["q4"], labels["q1"]]
    # Deterministic: the same data gives the same labels.
    assert FailureClusterer(encoder).fit_predict(failures).tolist() == clusterer.labels_.tolist()


def test_clusterer_handles_few_failures() -> None:
    encoder = TopicEncoder()
    with pytest.raises(NotFittedError, match="call fit before predict"):
        FailureClusterer(encoder).predict(["x"])
    empty = FailureClusterer(encoder).fit([])
    assert empty.n_clusters_ == 0 and empty.labels_.shape == (0,)
    one = FailureClusterer(encoder).fit(["a card"])
    assert one.n_clusters_ == 1 and one.labels_.tolist() == [0]
    two = FailureClusterer(encoder).fit(["a card", "a loan"])  # too few for a silhouette: one cluster
    assert two.n_clusters_ == 1 and two.labels_.tolist() == [0, 0]
    same = FailureClusterer(encoder, n_clusters=3).fit(["a card"] * 4)  # k is capped by distinct points
    assert same.n_clusters_ == 1
    fixed = FailureClusterer(encoder, n_clusters=3).fit(["a card", "a loan", "an egg", "the loan"])
    assert fixed.n_clusters_ == 3 and fixed.silhouette_ == {}
    with pytest.raises(ValueError, match="n_clusters must be >= 1"):
        FailureClusterer(encoder, n_clusters=0)


def test_ranking_by_cost_computed_by_hand(failures: list[Failure], config) -> None:
    labels = [0 if f.query_id in CARD else 1 for f in failures]
    loan, card = rank_clusters(failures, labels, price_gap_from_config(config))
    card_cost, loan_cost = sum(COST[q] for q in CARD), sum(COST[q] for q in LOAN)
    assert loan_cost > card_cost  # the smaller cluster costs more, so it ranks first
    assert (loan.cluster, loan.size, card.cluster, card.size) == (1, 2, 0, 3)
    assert loan.cost_usd == pytest.approx(loan_cost) and card.cost_usd == pytest.approx(card_cost)
    assert card.mean_cost_usd == pytest.approx(card_cost / 3)
    assert loan.share == pytest.approx(loan_cost / (loan_cost + card_cost))
    assert loan.share + card.share == pytest.approx(1.0)
    assert card.tasks == {"cs_intent": 3} and card.reasons == {"escalated": 2, "negative_feedback": 1}
    # Examples are the costliest inputs first, at most 200 characters each.
    assert card.examples[0] == LONG_CARD[:199] + "…" and len(card.examples[0]) == 200
    assert card.examples[1:] == ["where is my new card?", "card never arrived"]
    assert loan.query_ids == ["q4", "q11"]
    with pytest.raises(ValueError, match="same length"):
        rank_clusters(failures, labels[:-1], price_gap_from_config(config))


def test_price_gap_comes_from_the_config(config) -> None:
    gap = price_gap_from_config(config)
    assert gap("cheap", "frontier", 1000, 100) == pytest.approx(usd("frontier", 1000, 100) - usd("cheap", 1000, 100))


def test_teacher_data_from_log_and_a_sync_frontier_call(failures: list[Failure]) -> None:
    asked: list[tuple[str, str]] = []

    def frontier(task: str, text: str) -> str | None:
        asked.append((task, text))
        if "apply" in text:
            raise ConnectionError("frontier down")  # skipped and counted, not fatal
        return f"teacher: {text}"

    teacher = teacher_examples([*failures, failures[0]], frontier)  # a repeated failure is one example
    by_id = {e.query_id: e for e in teacher.examples}
    assert {q: e.source for q, e in by_id.items()} == {"q1": "log", "q2": "log", "q3": "frontier", "q11": "frontier"}
    assert by_id["q1"].answer == "answer to q1" and by_id["q3"].answer == "teacher: card never arrived"
    assert (teacher.from_log, teacher.from_frontier, teacher.skipped, teacher.duplicates) == (2, 2, 1, 1)
    assert teacher.skipped_ids == ["q4"]
    assert sorted(asked) == [("chat", "how do I apply for a loan"), ("chat", "is my loan interest rate too high"),
                             ("cs_intent", "card never arrived")]
    without = teacher_examples(failures)
    assert (without.from_log, without.skipped) == (2, 3)


async def test_teacher_data_from_an_async_frontier_call(failures: list[Failure]) -> None:
    async def frontier(task: str, text: str) -> str | None:
        return None if "loan" in text else f"async {task}"

    teacher = await teacher_examples_async(failures, frontier)
    assert [(e.query_id, e.source, e.answer) for e in teacher.examples if e.source == "frontier"] == [
        ("q3", "frontier", "async cs_intent")
    ]
    assert teacher.skipped_ids == ["q4", "q11"]
    with pytest.raises(RuntimeError, match="await teacher_examples_async"):
        teacher_examples(failures)


def test_report_holds_the_numbers(failures: list[Failure], config, tmp_path: Path) -> None:
    labels = [0 if f.query_id in CARD else 1 for f in failures]
    summaries = rank_clusters(failures, labels, price_gap_from_config(config))
    md, js = tmp_path / "report" / "clusters.md", tmp_path / "report" / "clusters.json"
    write_cluster_report(summaries, md, js, meta={"since": "2026-01-01"})
    text = md.read_text()
    loan_cost = sum(COST[q] for q in LOAN)
    assert f"| 1 | 1 | 2 | chat (2) | {loan_cost:.6f} | {summaries[0].share:.1%} |" in text
    assert "| 2 | 0 | 3 | cs_intent (3) |" in text
    assert "- where is my new card?" in text and "- since: 2026-01-01" in text
    data = json.loads(js.read_text())
    assert [c["rank"] for c in data["clusters"]] == [1, 2]
    assert data["clusters"][0]["cost_usd"] == pytest.approx(loan_cost)
    assert data["total_cost_usd"] == pytest.approx(sum(COST.values()))
    assert data["clusters"][1]["tasks"] == {"cs_intent": 3}


def test_mine_ties_it_together(log_uri: str, config) -> None:
    result = mine(log_uri, config, TopicEncoder(), top_k=1, frontier_call=lambda task, text: f"t: {text}")
    assert (result.n_queries, result.n_feedback, len(result.failures)) == (len(QUERIES), len(FEEDBACK), 5)
    [top] = result.top_clusters
    assert top == result.clusters[0].cluster
    assert [f.query_id for f in result.failures_in([top])] == LOAN
    assert result.clusters[0].cost_usd == pytest.approx(sum(COST[q] for q in LOAN))
    assert sorted((e.query_id, e.source) for e in result.teacher.examples) == [("q11", "frontier"), ("q4", "frontier")]
    # Queries older than `since` are left out (q1..q3 are logged at seconds 1..3).
    later = mine(log_uri, config, TopicEncoder(), since="2026-01-01T00:00:04+00:00")
    assert [f.query_id for f in later.failures] == ["q4", "q11"] and later.n_queries == len(QUERIES) - 3
    # A student that can learn only some tasks (a specialist's heads) mines only their failures.
    cards = mine(log_uri, config, TopicEncoder(), tasks=["cs_intent"], frontier_call=lambda task, text: text)
    assert [f.query_id for f in cards.failures] == CARD
    assert {e.task for e in cards.teacher.examples} == {"cs_intent"}


@pytest.mark.slow
def test_real_encoder_separates_two_topics() -> None:
    from routenlp_ray.models.encoder import SentenceEncoder

    cards = [
        "my debit card has not arrived", "where is my new credit card", "card payment declined at the shop",
        "how do I activate my bank card", "my card was stolen, please block it", "the ATM kept my card",
        "I lost my bank card", "my card expired and I need a replacement", "why was my card charged twice",
        "contactless payments stopped working on my card",
    ]
    cooking = [
        "how long should I boil an egg", "recipe for tomato pasta sauce", "how do I bake sourdough bread",
        "what temperature to roast a chicken", "easy vegetarian curry recipe", "how to make fluffy pancakes",
        "best way to cook rice on the stove", "chocolate cake recipe without eggs", "how long to grill salmon",
        "how to season a cast iron pan",
    ]
    failures = [
        Failure(f"q{i}", "chat", text, "escalated", ("cheap",), "frontier", "frontier", 0.0, None)
        for i, text in enumerate(cards + cooking)
    ]
    clusterer = FailureClusterer(SentenceEncoder()).fit(failures)
    labels = clusterer.labels_.tolist()
    assert clusterer.n_clusters_ >= 2
    # Every cluster holds one topic only.
    assert not set(labels[: len(cards)]) & set(labels[len(cards):]), labels


def test_a_cost_share_selects_the_fewest_costliest_clusters_and_teaches_only_their_failures(log_uri: str,
                                                                                            config) -> None:
    everything = mine(log_uri, config, TopicEncoder(), top_k=len(QUERIES))
    shares = [c.share for c in everything.clusters]
    # Just over the costliest cluster's share needs the second one too; at most its share needs it alone.
    for share, wanted in ((shares[0], 1), (shares[0] + 1e-6, 2), (1.0, len(shares))):
        result = mine(log_uri, config, TopicEncoder(), top_cost_share=share, frontier_call=lambda task, text: text)
        assert result.top_clusters == [c.cluster for c in result.clusters[:wanted]]
        selected = {q for c in result.clusters[:wanted] for q in c.query_ids}
        taught = {e.query_id for e in result.teacher.examples}
        assert taught and taught <= selected
        assert taught == {f.query_id for f in result.failures_in(result.top_clusters)}


def test_a_task_no_cheap_tier_serves_is_mined_as_uncovered_when_a_tier_could_learn_it(config) -> None:
    direct = query("q40", "legal_risk", "the provider may end the contract at will",
                   [attempt("frontier", "accepted", 120, 2)], "frontier")
    served = query("q41", "cs_intent", "card never arrived", [attempt("cheap", "accepted", 100, 10)], "cheap")
    assert find_failures([direct, served], [], ["cheap"], "frontier") == []
    [failure] = find_failures([direct, served], [], ["cheap"], "frontier", uncovered={"legal_risk": "cheap"})
    assert failure.reason == "uncovered" and failure.failed_tiers == ("cheap",) and failure.target_tier == "frontier"
    assert failure.teacher_answer == "answer to q40" and failure.attempt_costs == {"frontier": usd("frontier", 120, 2)}
    # It costs what the cheap tier would have saved: the price gap on the query's tokens.
    [cluster] = rank_clusters([failure], [0], price_gap_from_config(config))
    assert cluster.cost_usd == pytest.approx(usd("frontier", 120, 2) - usd("cheap", 120, 2))


def _priced(qid: str, task: str, answer: str, cost: float, reason: str = "escalated") -> Failure:
    return Failure(qid, task, f"text {qid}", reason, ("cheap",), "frontier", "frontier", cost, answer,
                   attempt_costs={"cheap": 0.0, "frontier": cost})


def test_novel_first_ranks_failures_the_student_cannot_express_ahead_of_costlier_hard_cases() -> None:
    from routenlp_ray.loop.mining import is_novel, top_clusters

    known_labels = {"cs_intent": {"card_arrival", "refund"}}

    def novelty(task: str, answer: str) -> bool:
        return task in known_labels and answer.strip() not in known_labels[task]

    failures = [
        _priced("r1", "cs_response", "a long reply", 0.010),  # costly, in known territory
        _priced("r2", "cs_response", "another reply", 0.010),
        _priced("i1", "cs_intent", "card_arrival", 0.001),  # a label the head has: a hard case
        _priced("i2", "cs_intent", "new_product", 0.001),  # a label it never had
        _priced("i3", "cs_intent", "new_product", 0.001),
        _priced("k1", "legal_risk", "high", 0.003, reason="uncovered"),  # a task it has no head for
    ]
    labels = [0, 0, 1, 2, 2, 3]
    def gap(*_: object) -> float:  # unused: every failure carries both tiers' logged costs
        return 0.0

    assert [is_novel(f, novelty) for f in failures] == [False, False, False, True, True, True]
    by_cost = rank_clusters(failures, labels, gap)
    assert by_cost[0].cluster == 0
    ranked = rank_clusters(failures, labels, gap, novelty, "novel_first")
    assert [c.cluster for c in ranked] == [3, 2, 0, 1]
    assert ranked[0].novel == 1 and ranked[1].novel == 2 and ranked[1].novel_cost_usd == pytest.approx(0.002)
    # The novel clusters first, then clusters in rank order until the budget's worth of failures is held.
    assert top_clusters(ranked, 1, 1.0, "novel_first", min_failures=0) == [3, 2]
    assert top_clusters(ranked, 1, 1.0, "novel_first", min_failures=5) == [3, 2, 0]
    # With nothing novel, novel_first is the cost rule.
    plain = rank_clusters(failures[:3], labels[:3], gap, novelty, "novel_first")
    assert top_clusters(plain, 1, None, "novel_first") == top_clusters(plain, 1, None, "cost") == [0]
