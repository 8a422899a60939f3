"""Failure mining: where do the cheap tiers fail, and what does it cost?

The loop's first step reads the query log and finds the queries a cheap tier could not
handle: the cascade escalated past it (its answer was too uncertain, it errored or timed
out), or it answered and the client's feedback rejected the answer; or, for a task that no
cheap tier serves yet but one could learn, the frontier answered it alone (``uncovered``). Those failures are
embedded, clustered, and ranked by the money each cluster costs; the costliest clusters get
teacher answers from the frontier for distillation.

::

    failures = find_failures(queries, feedback, cheap_tiers, frontier)
    clusterer = FailureClusterer(encoder).fit(failures)
    clusters = rank_clusters(failures, clusterer.labels_, price_gap_from_config(config))
    teacher = teacher_examples([f for f, c in zip(failures, clusterer.labels_) if c == clusters[0].cluster])

``mine`` does all of it from a log URI.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from routenlp_ray._exceptions import NotFittedError
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.telemetry.querylog import read_records

logger = logging.getLogger("routenlp.loop.mining")

FailureReason = Literal["escalated", "negative_feedback", "uncovered"]
# An attempt with one of these statuses means the tier did not give an answer the cascade kept.
FAILED_ATTEMPT_STATUSES = frozenset({"escalated", "error", "timeout"})
# Attempts that produced an answer, so their logged cost is a real price of that tier on this query.
ANSWERED_ATTEMPT_STATUSES = frozenset({"accepted", "escalated", "fallback"})
EXAMPLES_PER_CLUSTER = 5
EXAMPLE_MAX_CHARS = 200
SILHOUETTE_SAMPLE = 2000

PriceGapFn = Callable[[str, str, int, int], float]
"""``(failed_tier, target_tier, prompt_tokens, completion_tokens) -> USD`` the target costs more."""

FrontierCall = Callable[[str, str], "str | None | Awaitable[str | None]"]
"""``(task, input) -> answer``, sync or async; None or an exception means no answer."""

NoveltyFn = Callable[[str, str], bool]
"""``(task, teacher answer) -> True`` when the student cannot express that answer today: a label its
head never had, an entity type it never tagged. Such a failure is sure to be recoverable by distilling it."""

Targeting = Literal["cost", "novel_first"]


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


# -- failures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """One query a cheap tier failed on."""

    query_id: str
    task: str
    input: str
    reason: FailureReason
    failed_tiers: tuple[str, ...]
    # The tier whose price the failure is measured against: the one that answered after the
    # escalation, or the frontier when a cheap answer was rejected (that is where it should have gone).
    target_tier: str
    answered_by: str | None
    escalation_cost_usd: float
    teacher_answer: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Logged cost of each tier that produced an answer on this query.
    attempt_costs: Mapping[str, float] = field(default_factory=dict, hash=False)
    ts: str | None = None

    @property
    def text(self) -> str:
        """What is embedded for clustering: the task matters as much as the wording."""
        return f"{self.task}: {self.input}"


def find_failures(
    queries: Iterable[Mapping[str, Any]],
    feedback: Iterable[Mapping[str, Any]],
    cheap_tiers: Sequence[str],
    frontier: str,
    min_score: float = 0.5,
    uncovered: Mapping[str, str] | None = None,
) -> list[Failure]:
    """The cheap-tier failures among logged queries, in log order.

    A query is a failure when (a) a cheap tier's attempt was escalated, errored or timed out
    and the final answer came from a more expensive tier, or (b) a cheap tier answered and the
    latest feedback on it says ``accepted=False`` (or, with ``accepted`` unset, ``score < min_score``).
    Tiers missing from ``cheap_tiers + [frontier]`` (an older config) are ignored.
    ``uncovered`` maps a task no cheap tier serves to the cheap tier that could learn it: each of
    its queries the frontier answered is then (c) a failure of that tier, costing the price gap.
    """
    if frontier in cheap_tiers:
        raise ValueError(f"frontier ({frontier!r}) must not be one of the cheap tiers ({list(cheap_tiers)})")
    rank = {name: i for i, name in enumerate([*cheap_tiers, frontier])}
    verdicts = _latest_feedback(feedback)
    failures = []
    for query in queries:
        failure = _failure_of(query, rank, frontier, verdicts.get(query.get("id")), min_score)
        learner = (uncovered or {}).get(str(query.get("task")))
        if failure is None and learner is not None and query.get("answered_by") == frontier:
            failure = _uncovered_failure(query, learner, frontier)
        if failure is not None:
            failures.append(failure)
    return failures


def _latest_feedback(feedback: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    # A client may correct itself; the newest verdict wins. Segments are not read in time order.
    latest: dict[str, Mapping[str, Any]] = {}
    for record in feedback:
        key = record.get("response_id")
        if key is None:
            continue
        previous = latest.get(key)
        if previous is None or str(record.get("ts") or "") >= str(previous.get("ts") or ""):
            latest[key] = record
    return latest


def _is_negative(verdict: Mapping[str, Any] | None, min_score: float) -> bool:
    if verdict is None:
        return False
    accepted = verdict.get("accepted")
    if accepted is not None:
        return not accepted
    score = verdict.get("score")
    return score is not None and float(score) < min_score


def _failure_of(
    query: Mapping[str, Any],
    rank: Mapping[str, int],
    frontier: str,
    verdict: Mapping[str, Any] | None,
    min_score: float,
) -> Failure | None:
    answered_by = query.get("answered_by")
    if query.get("status", "ok") != "ok" or answered_by not in rank:
        return None  # no answer at all is an outage, not something distillation fixes
    attempts = [a for a in query.get("attempts") or [] if a.get("tier") in rank]
    negative = _is_negative(verdict, min_score)
    answer_rank = rank[answered_by]
    failed = [
        a["tier"]
        for a in attempts
        if a.get("status") in FAILED_ATTEMPT_STATUSES and rank[a["tier"]] < answer_rank
    ]
    if failed:
        reason: FailureReason = "escalated"
        target = answered_by
        lowest = min(rank[t] for t in failed)
        paid = sum(float(a.get("cost_usd") or 0.0) for a in attempts if rank[a["tier"]] > lowest)
    elif negative and answered_by != frontier:
        reason, target, failed, paid = "negative_feedback", frontier, [answered_by], 0.0
    else:
        return None
    # A rejected answer is no teacher, even the frontier's.
    teacher = query.get("answer") if answered_by == frontier and not query.get("fallback") and not negative else None
    costs = {
        a["tier"]: float(a.get("cost_usd") or 0.0)
        for a in attempts
        if a.get("status") in ANSWERED_ATTEMPT_STATUSES and (a.get("prompt_tokens") or a.get("completion_tokens"))
    }
    return Failure(
        query_id=str(query.get("id")),
        task=str(query.get("task")),
        input=str(query.get("input") or ""),
        reason=reason,
        failed_tiers=tuple(dict.fromkeys(failed)),
        target_tier=target,
        answered_by=answered_by,
        escalation_cost_usd=paid,
        teacher_answer=teacher,
        prompt_tokens=int(query.get("prompt_tokens") or 0),
        completion_tokens=int(query.get("completion_tokens") or 0),
        attempt_costs=costs,
        ts=query.get("ts"),
    )


def _uncovered_failure(query: Mapping[str, Any], learner: str, frontier: str) -> Failure | None:
    if query.get("status", "ok") != "ok" or query.get("fallback"):
        return None
    costs = {a["tier"]: float(a.get("cost_usd") or 0.0) for a in query.get("attempts") or []
             if a.get("tier") == frontier and a.get("status") in ANSWERED_ATTEMPT_STATUSES}
    return Failure(
        query_id=str(query.get("id")), task=str(query.get("task")), input=str(query.get("input") or ""),
        reason="uncovered", failed_tiers=(learner,), target_tier=frontier, answered_by=frontier,
        escalation_cost_usd=costs.get(frontier, 0.0), teacher_answer=query.get("answer"),
        prompt_tokens=int(query.get("prompt_tokens") or 0), completion_tokens=int(query.get("completion_tokens") or 0),
        attempt_costs=costs, ts=query.get("ts"),
    )


# -- clustering ---------------------------------------------------------------------------
def _texts(items: Sequence[Failure | str]) -> list[str]:
    return [item if isinstance(item, str) else item.text for item in items]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    # Cosine geometry whatever the encoder returns, so k-means compares directions, not lengths.
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


class FailureClusterer:
    """K-means over failure embeddings; ``k`` is given or picked by silhouette.

    ``fit`` takes failures (or plain texts) and returns ``self``. After it: ``labels_`` (n,),
    ``centroids_`` (k, dim), ``n_clusters_`` and ``silhouette_`` (``{k: score}``, empty when
    ``k`` was not searched). Fewer than two distinct failures make one cluster; none make zero.
    """

    def __init__(
        self,
        encoder: Encoder,
        n_clusters: int | None = None,
        max_clusters: int = 10,
        random_state: int = 0,
        n_init: int = 10,
    ) -> None:
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1 or None, got {n_clusters}")
        if max_clusters < 2:
            raise ValueError(f"max_clusters must be >= 2, got {max_clusters}")
        self.encoder = encoder
        self.n_clusters = n_clusters
        self.max_clusters = max_clusters
        self.random_state = random_state
        self.n_init = n_init

    def fit(self, failures: Sequence[Failure | str]) -> FailureClusterer:
        texts = _texts(failures)
        self.silhouette_: dict[int, float] = {}
        if not texts:
            self.labels_ = np.zeros(0, dtype=np.int64)
            self.centroids_ = np.zeros((0, 0))
            self.n_clusters_ = 0
            return self
        x = _unit_rows(self.encoder.encode(texts))
        # k-means cannot place more centres than there are distinct points.
        distinct = len(np.unique(np.round(x, 8), axis=0))
        k = min(self.n_clusters, distinct) if self.n_clusters is not None else self._search_k(x, distinct)
        if k <= 1:
            self.labels_ = np.zeros(len(texts), dtype=np.int64)
            self.centroids_ = x.mean(axis=0, keepdims=True)
        else:
            model = self._kmeans(k).fit(x)
            self.labels_ = model.labels_.astype(np.int64)
            self.centroids_ = model.cluster_centers_
        self.n_clusters_ = len(self.centroids_)
        return self

    def _kmeans(self, k: int) -> Any:
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state)

    def _search_k(self, x: np.ndarray, distinct: int) -> int:
        from sklearn.metrics import silhouette_score

        # The silhouette is defined for 2 <= k <= n - 1 only.
        upper = min(self.max_clusters, distinct, len(x) - 1)
        # The silhouette needs all pairwise distances; a sample keeps a big log's memory bounded.
        sample = min(len(x), SILHOUETTE_SAMPLE)
        for k in range(2, upper + 1):
            labels = self._kmeans(k).fit_predict(x)
            self.silhouette_[k] = float(silhouette_score(x, labels, sample_size=sample, random_state=self.random_state))
        if not self.silhouette_:
            return 1
        # The smallest k among equally good ones: fewer, larger clusters are easier to act on.
        return max(self.silhouette_, key=lambda k: (round(self.silhouette_[k], 9), -k))

    def predict(self, failures: Sequence[Failure | str]) -> np.ndarray:
        """Index of the nearest centroid for each failure, shape (n,)."""
        if not hasattr(self, "centroids_"):
            raise NotFittedError("this FailureClusterer is not fitted yet; call fit before predict")
        texts = _texts(failures)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self.n_clusters_ == 0:
            raise NotFittedError("this FailureClusterer was fitted on no failures; it has no clusters to predict")
        x = _unit_rows(self.encoder.encode(texts))
        distances = ((x[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int64)

    def fit_predict(self, failures: Sequence[Failure | str]) -> np.ndarray:
        return self.fit(failures).labels_


# -- ranking ------------------------------------------------------------------------------
def price_gap_from_config(config: RouteNLPConfig) -> PriceGapFn:
    """The configured price difference between two tiers on one query's tokens."""

    def gap(failed_tier: str, target_tier: str, prompt_tokens: int, completion_tokens: int) -> float:
        target = config.tier(target_tier).pricing.cost_usd(prompt_tokens, completion_tokens)
        return target - config.tier(failed_tier).pricing.cost_usd(prompt_tokens, completion_tokens)

    return gap


def failure_cost_usd(failure: Failure, price_gap_fn: PriceGapFn) -> float:
    """What the failure costs: for each failed tier, the price gap to the target tier.

    Logged attempt costs are used when both tiers produced an answer on this query; otherwise
    (an error or timeout has no tokens, a rejected answer never reached the frontier) both are
    priced with ``price_gap_fn`` on the query's final token counts. A gap is never negative:
    a failure does not save money, even when the cheap tier happened to write more tokens.
    """
    costs, target = failure.attempt_costs, failure.target_tier
    total = 0.0
    for tier in failure.failed_tiers:
        if tier in costs and target in costs:
            gap = costs[target] - costs[tier]
        else:
            gap = price_gap_fn(tier, target, failure.prompt_tokens, failure.completion_tokens)
        total += max(gap, 0.0)
    return total


@dataclass
class ClusterSummary:
    """One failure cluster, as the report shows it."""

    cluster: int
    size: int
    tasks: dict[str, int]
    reasons: dict[str, int]
    cost_usd: float
    mean_cost_usd: float
    share: float
    examples: list[str]
    query_ids: list[str]
    # What the failures the student cannot express today (see NoveltyFn) cost, and how many there are.
    novel_cost_usd: float = 0.0
    novel: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _truncate(text: str, limit: int = EXAMPLE_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def select_clusters(costs_in_rank_order: Sequence[float], fraction: float) -> int:
    """How many of the costliest clusters it takes to cover ``fraction`` of the failure cost (at least 1)."""
    total = float(sum(costs_in_rank_order))
    if total <= 0:
        return min(1, len(costs_in_rank_order))
    covered = np.cumsum(costs_in_rank_order) / total
    return int(min(len(covered), np.searchsorted(covered, fraction - 1e-12) + 1))


def is_novel(failure: Failure, novelty: NoveltyFn | None) -> bool:
    """A failure on a task no cheap tier serves, or whose teacher answer the student cannot express today."""
    if failure.reason == "uncovered":
        return True
    return bool(novelty and failure.teacher_answer and novelty(failure.task, failure.teacher_answer))


def rank_clusters(failures: Sequence[Failure], labels: Sequence[int], price_gap_fn: PriceGapFn,
                  novelty: NoveltyFn | None = None, targeting: Targeting = "cost") -> list[ClusterSummary]:
    """One summary per cluster, costliest first (ties: larger first, then lower cluster id).

    With ``targeting="novel_first"`` the clusters are ranked by the cost of their novel failures
    first (see :func:`is_novel`), then by cost: a failure in known territory is often a hard case
    more data does not fix, while one the student cannot express is fixed by distilling it."""
    if len(failures) != len(labels):
        raise ValueError(f"failures ({len(failures)}) and labels ({len(labels)}) must have the same length")
    members: dict[int, list[tuple[float, Failure]]] = {}
    for failure, label in zip(failures, labels):
        members.setdefault(int(label), []).append((failure_cost_usd(failure, price_gap_fn), failure))
    grand_total = sum(cost for group in members.values() for cost, _ in group)
    summaries = []
    for cluster, group in members.items():
        total = sum(cost for cost, _ in group)
        novel = [cost for cost, f in group if is_novel(f, novelty)]
        # The costliest inputs first: they are the ones worth reading.
        ordered = sorted(group, key=lambda item: -item[0])
        examples = list(dict.fromkeys(_truncate(f.input) for _, f in ordered))[:EXAMPLES_PER_CLUSTER]
        summaries.append(
            ClusterSummary(
                cluster=cluster,
                size=len(group),
                tasks=dict(Counter(f.task for _, f in group).most_common()),
                reasons=dict(Counter(f.reason for _, f in group).most_common()),
                cost_usd=total,
                mean_cost_usd=total / len(group),
                share=total / grand_total if grand_total > 0 else 0.0,
                examples=examples,
                query_ids=[f.query_id for _, f in group],
                novel_cost_usd=float(sum(novel)),
                novel=len(novel),
            )
        )
    if targeting == "novel_first":
        return sorted(summaries, key=lambda s: (-s.novel_cost_usd, -s.cost_usd, -s.size, s.cluster))
    return sorted(summaries, key=lambda s: (-s.cost_usd, -s.size, s.cluster))


def top_clusters(clusters: Sequence[ClusterSummary], top_k: int, top_cost_share: float | None,
                 targeting: Targeting = "cost", min_failures: int = 0) -> list[int]:
    """The clusters to distil, in rank order: the ``top_k`` first, or the fewest covering ``top_cost_share``
    of the failure cost. With ``novel_first``, the share is of the novel failures' cost when there are
    any, and clusters are added in rank order until they hold ``min_failures`` (the budget)."""
    if targeting == "novel_first" and any(c.novel for c in clusters):
        ranked = [c for c in clusters if c.novel]
        k = select_clusters([c.novel_cost_usd for c in ranked], top_cost_share) if top_cost_share else top_k
        chosen = list(clusters[: min(k, len(ranked))])
        for cluster in clusters[len(chosen):]:
            if sum(c.size for c in chosen) >= min_failures:
                break
            chosen.append(cluster)
        return [c.cluster for c in chosen]
    if top_cost_share is not None:
        top_k = select_clusters([c.cost_usd for c in clusters], top_cost_share)
    return [c.cluster for c in clusters[:top_k]]


# -- teacher data -------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherExample:
    task: str
    input: str
    answer: str
    source: Literal["log", "frontier"]
    query_id: str
    novel: bool = False


@dataclass
class TeacherSet:
    """Distillation data and how it was obtained."""

    examples: list[TeacherExample] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)
    duplicates: int = 0

    @property
    def from_log(self) -> int:
        return sum(1 for e in self.examples if e.source == "log")

    @property
    def from_frontier(self) -> int:
        return sum(1 for e in self.examples if e.source == "frontier")

    @property
    def skipped(self) -> int:
        return len(self.skipped_ids)


async def teacher_examples_async(
    failures: Sequence[Failure], frontier_call: FrontierCall | None = None, max_concurrency: int = 8
) -> TeacherSet:
    """Teacher answers for failures: the logged frontier answer, else one from ``frontier_call``.

    Repeated ``(task, input)`` pairs yield one example (counted in ``duplicates``). A failure
    with no logged answer is skipped when there is no ``frontier_call``, or it raises or
    returns nothing: a broken frontier must not stop the loop, so it is logged and counted.
    """
    unique: dict[tuple[str, str], Failure] = {}
    duplicates = 0
    for failure in failures:
        key = (failure.task, failure.input)
        if key in unique:
            duplicates += 1
            # Prefer the copy whose answer is already in the log: it costs no frontier call.
            if unique[key].teacher_answer is None and failure.teacher_answer is not None:
                unique[key] = failure
        else:
            unique[key] = failure
    limit = asyncio.Semaphore(max_concurrency)

    async def one(failure: Failure) -> TeacherExample | None:
        if failure.teacher_answer:
            return TeacherExample(failure.task, failure.input, failure.teacher_answer, "log", failure.query_id)
        if frontier_call is None:
            return None
        async with limit:
            try:
                answer = frontier_call(failure.task, failure.input)
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception:
                logger.warning("frontier call failed for query %s", failure.query_id, exc_info=True)
                return None
        if not isinstance(answer, str) or not answer.strip():
            return None
        return TeacherExample(failure.task, failure.input, answer, "frontier", failure.query_id)

    chosen = list(unique.values())
    results = await asyncio.gather(*(one(f) for f in chosen))
    teacher = TeacherSet(duplicates=duplicates)
    for failure, example in zip(chosen, results):
        if example is None:
            teacher.skipped_ids.append(failure.query_id)
        else:
            teacher.examples.append(example)
    return teacher


def teacher_examples(
    failures: Sequence[Failure], frontier_call: FrontierCall | None = None, max_concurrency: int = 8
) -> TeacherSet:
    """Blocking form of ``teacher_examples_async``; inside an event loop, await that one instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(teacher_examples_async(failures, frontier_call, max_concurrency))
    raise RuntimeError("teacher_examples was called inside a running event loop; await teacher_examples_async")


# -- report -------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_cluster_report(
    summaries: Sequence[ClusterSummary],
    path_md: str | os.PathLike[str],
    path_json: str | os.PathLike[str],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """The ranked clusters as Markdown for people and as JSON for the next loop step."""
    total = sum(s.cost_usd for s in summaries)
    lines = ["# Cheap-tier failure clusters", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        f"- failures: {sum(s.size for s in summaries)} in {len(summaries)} clusters",
        f"- cost caused: ${total:.6f}",
        "",
        "| rank | cluster | size | tasks | cost USD | share |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for rank, s in enumerate(summaries, start=1):
        tasks = ", ".join(f"{task} ({n})" for task, n in s.tasks.items())
        lines.append(f"| {rank} | {s.cluster} | {s.size} | {_md_cell(tasks)} | {s.cost_usd:.6f} | {s.share:.1%} |")
    for rank, s in enumerate(summaries, start=1):
        lines += ["", f"## {rank}. Cluster {s.cluster}", ""]
        lines += [f"- {_md_cell(example)}" for example in s.examples]
    for path in (path_md, path_json):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path_md).write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = {
        "meta": dict(meta or {}),
        "total_cost_usd": total,
        "clusters": [{"rank": rank, **s.to_dict()} for rank, s in enumerate(summaries, start=1)],
    }
    Path(path_json).write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


# -- the whole step -----------------------------------------------------------------------
@dataclass
class MiningResult:
    failures: list[Failure]
    labels: np.ndarray
    clusters: list[ClusterSummary]
    top_clusters: list[int]
    teacher: TeacherSet
    n_queries: int
    n_feedback: int

    def failures_in(self, clusters: Iterable[int]) -> list[Failure]:
        wanted = set(clusters)
        return [f for f, label in zip(self.failures, self.labels) if int(label) in wanted]


def logged_since(queries: list[dict[str, Any]], since: str | datetime | None) -> list[dict[str, Any]]:
    """The queries logged at or after ``since`` (all of them when it is None)."""
    if since is None:
        return queries
    start = _parse_ts(since)
    return [q for q in queries if q.get("ts") and _parse_ts(q["ts"]) >= start]


def _parse_ts(value: str | datetime) -> datetime:
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    # A naive time is taken as UTC, which is what the router logs.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def mine(
    log_uri: str,
    config: RouteNLPConfig,
    encoder: Encoder,
    top_k: int = 3,
    since: str | datetime | None = None,
    n_clusters: int | None = None,
    frontier_call: FrontierCall | None = None,
    random_state: int = 0,
    top_cost_share: float | None = None,
    tasks: Iterable[str] | None = None,
    uncovered: Mapping[str, str] | None = None,
    novelty: NoveltyFn | None = None,
    targeting: Targeting = "cost",
    min_failures: int = 0,
) -> MiningResult:
    """Read the log, find and cluster cheap-tier failures, rank them, and gather teacher data
    for the ``top_k`` costliest clusters, or, with ``top_cost_share``, for the fewest costliest
    clusters that cover that share of the failure cost. ``since`` keeps queries logged at or after it;
    ``tasks`` keeps only failures of those tasks (a student that can learn only some of them);
    ``uncovered`` counts the frontier's answers on tasks no cheap tier serves (see ``find_failures``);
    ``novelty``, ``targeting`` and ``min_failures`` are :func:`rank_clusters`'s and :func:`top_clusters`'."""
    queries = logged_since(read_records(log_uri, "queries"), since)
    # Feedback is not filtered: a verdict only matters through its query, which is.
    feedback = read_records(log_uri, "feedback")
    cheap = [tier.name for tier in config.tiers[:-1]]
    failures = find_failures(queries, feedback, cheap, config.frontier.name, uncovered=uncovered)
    if tasks is not None:
        wanted = set(tasks)
        failures = [f for f in failures if f.task in wanted]
    clusterer = FailureClusterer(encoder, n_clusters=n_clusters, random_state=random_state).fit(failures)
    clusters = rank_clusters(failures, clusterer.labels_, price_gap_from_config(config), novelty, targeting)
    top = top_clusters(clusters, top_k, top_cost_share, targeting, min_failures)
    result = MiningResult(
        failures=failures,
        labels=clusterer.labels_,
        clusters=clusters,
        top_clusters=top,
        teacher=TeacherSet(),
        n_queries=len(queries),
        n_feedback=len(feedback),
    )
    result.teacher = teacher_examples(result.failures_in(top), frontier_call)
    uncovered_ids = {f.query_id for f in failures if f.reason == "uncovered"}
    result.teacher.examples = [
        replace(e, novel=e.query_id in uncovered_ids or bool(novelty and novelty(e.task, e.answer)))
        for e in result.teacher.examples
    ]
    return result
