"""Targeted vs untargeted distillation into the specialist tier, at real scale, offline.

No Ray Serve runs here: the traffic is simulated by taking the cascade's own decision on each
query (the specialist's answer, accepted when its uncertainty is within the task's
quality-rule threshold, else the frontier's), which is what the served cascade does. The
frontier's answers are the data's references (``answer_text``), as the replay frontier serves them.

One seed:

1. A task's train pool is split into a *seed* part (the base specialist's training pairs), a
   *calibration* slice (the traffic-time thresholds) and *traffic* (the rest).
2. Traffic runs through base specialist -> frontier. Failures are escalations and
   accepted-but-wrong answers (judged against the reference, standing in for user feedback).
3. The failures are clustered (``FailureClusterer``, a fixed k) and ranked by cost
   (``rank_clusters``). For each budget fraction f, the top clusters covering f of the failure
   cost give the targeted examples; the untargeted student gets as many examples, drawn from all
   traffic. Each student is the base pairs plus its extra (query, frontier answer) pairs, refitted
   with the base's C (the same hyper-parameters for all).
4. Validation (never traffic) is split in halves: each student's thresholds are recalibrated on
   the first half only, and its cascade is read on the second.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.bench.ratio_ci import RATIO_CI_RULE, extended_ratio, point_ratio, ratio_interval
from routenlp_ray.conformal.calibrator import ConformalCalibrator
from routenlp_ray.engines.base import estimate_tokens
from routenlp_ray.loop.mining import Failure, FailureClusterer, rank_clusters, select_clusters
from routenlp_ray.specialists.heads import HeadAnswer, SpecialistEncoder, make_head
from routenlp_ray.specialists.training import head_kind_for_parser
from routenlp_ray.tasks.data import answer_text, load_examples, task_file
from routenlp_ray.tasks.spec import TaskSpec

__all__ = [
    "Answers",
    "CachedEncoder",
    "LoopSpecialistSettings",
    "Query",
    "StudentEval",
    "bootstrap_ratio",
    "build_students",
    "cascade_outcome",
    "cost_reduction",
    "evaluate_student",
    "run_loop_specialist",
    "select_clusters",
    "split_pool",
    "split_validation",
]

SPECIALIST, FRONTIER = "specialist", "frontier"


@dataclass(frozen=True)
class Query:
    """One query with the frontier's answer (its reference) and what each tier would charge for it."""

    id: str
    task: str
    input: str
    reference: Any
    answer: str
    specialist_cost: float
    frontier_cost: float


@dataclass
class LoopSpecialistSettings:
    tasks: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    pool_per_task: int = 800
    validation_per_task: int = 400
    seed_share: float = 0.3
    calibration_share: float = 0.2
    min_traffic: int = 300
    n_clusters: int = 16
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    headline_fraction: float = 0.5
    delta: float = 0.1
    bootstrap: int = 1000


class CachedEncoder(SpecialistEncoder):
    """The specialist encoder with every text's vectors kept in memory for the run.

    Seven students per seed refit and answer on the same texts; encoding them once is what
    keeps the run within minutes on a shared CPU. The vectors are the encoder's own, unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sentences: dict[str, np.ndarray] = {}
        self._words: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # type: ignore[override]
        missing = [t for t in dict.fromkeys(texts) if t not in self._sentences]
        if missing:
            for text, row in zip(missing, super().encode(missing)):
                self._sentences[text] = row
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._sentences[t] for t in texts])

    def word_features(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(words)
        if key not in self._words:
            self._words[key] = super().word_features(words)
        features, fits = self._words[key]
        return features.copy(), fits.copy()


# -- splits -------------------------------------------------------------------------------
def split_pool(
    n: int, seed: int, seed_share: float, calibration_share: float, min_traffic: int
) -> dict[str, np.ndarray]:
    """Disjoint row indices of a task's train pool: ``seed``, ``calibration`` and ``traffic`` (the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    n_seed, n_cal = int(round(n * seed_share)), int(round(n * calibration_share))
    parts = {"seed": order[:n_seed], "calibration": order[n_seed : n_seed + n_cal], "traffic": order[n_seed + n_cal :]}
    if len(parts["traffic"]) < min_traffic:
        raise ValueError(
            f"a pool of {n} rows leaves {len(parts['traffic'])} traffic queries after seed_share={seed_share} and "
            f"calibration_share={calibration_share}; at least {min_traffic} are needed"
        )
    return parts


def split_validation(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration half, evaluation half) of a task's validation rows."""
    order = np.random.default_rng(10_000 + seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


# -- one student's answers, scored ---------------------------------------------------------
@dataclass
class Answers:
    """A student's answers on a list of queries, with everything the cascade needs per query."""

    uncertainty: np.ndarray
    score: np.ndarray
    correct: np.ndarray
    texts: list[str]


def _uncertainty(answers: Sequence[HeadAnswer], score_name: str) -> np.ndarray:
    values = []
    for a in answers:
        logps = np.asarray(a.token_logprobs, dtype=float)
        # The tier's own scores: mean token NLL, or the least sure word for entity lists.
        values.append(float(-logps.min()) if score_name == "max_nll" else float(-logps.mean()))
    return np.asarray(values)


class CachedBertScore:
    """BERTScore F1 exactly as ``tasks.bertscore.bertscore_f1`` computes it, with each text embedded once.

    ``bert_score`` re-embeds both texts of every pair; here a student's cache answers are train
    references seen many times, so token embeddings are kept per text and a pair is one matrix
    product. The run checks the two agree on a sample of pairs (``check``).
    """

    def __init__(self) -> None:
        from collections import defaultdict

        from routenlp_ray.tasks.bertscore import get_bert_scorer

        scorer = get_bert_scorer()
        self._model, self._tokenizer, self._device = scorer._model, scorer._tokenizer, scorer.device
        # bert_score's weights without idf: every word piece 1, [CLS] and [SEP] 0.
        self._idf: dict[int, float] = defaultdict(lambda: 1.0)
        self._idf[self._tokenizer.sep_token_id] = 0.0
        self._idf[self._tokenizer.cls_token_id] = 0.0
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _embedding(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if text not in self._cache:
            from bert_score.utils import get_bert_embedding

            emb, mask, idf = get_bert_embedding([text], self._model, self._tokenizer, self._idf, device=self._device)
            length = int(mask[0].sum().item())
            vectors = emb[0, :length].numpy().astype(np.float64)
            weights = idf[0, :length].numpy().astype(np.float64)
            self._cache[text] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True), weights / weights.sum())
        return self._cache[text]

    def f1(self, prediction: str, reference: str) -> float:
        if not prediction.strip() or not reference.strip():
            return 0.0
        (hyp, hyp_w), (ref, ref_w) = self._embedding(prediction), self._embedding(reference)
        sim = hyp @ ref.T
        precision, recall = float(sim.max(axis=1) @ hyp_w), float(sim.max(axis=0) @ ref_w)
        return min(1.0, 2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0

    def check(self, predictions: Sequence[str], references: Sequence[str]) -> float:
        """Largest difference from ``bertscore_f1`` on these pairs."""
        from routenlp_ray.tasks.bertscore import bertscore_f1

        exact = bertscore_f1(list(predictions), list(references))
        return float(max(abs(a - self.f1(p, r)) for a, p, r in zip(exact, predictions, references)))


class Scorer:
    """Per-example task metric with memory: the same (answer, reference) pair is scored once per run."""

    def __init__(self, specs: Mapping[str, TaskSpec]) -> None:
        self.specs = specs
        self._memo: dict[tuple[str, str, str], float] = {}
        self._bertscore: CachedBertScore | None = None

    def _score(self, spec: TaskSpec, predictions: list[str], references: list[Any]) -> list[float]:
        if spec.metric != "bertscore":
            return spec.score_batch(predictions, references)
        if self._bertscore is None:
            self._bertscore = CachedBertScore()
        return [self._bertscore.f1(spec.parse(p) or "", answer_text(r)) for p, r in zip(predictions, references)]

    def __call__(self, task: str, predictions: Sequence[str], references: Sequence[Any]) -> np.ndarray:
        spec = self.specs[task]
        keys = [(task, p, answer_text(r)) for p, r in zip(predictions, references)]
        todo = {k: (p, r) for k, p, r in zip(keys, predictions, references) if k not in self._memo}
        if todo:
            pairs = list(todo.values())
            for key, value in zip(todo, self._score(spec, [p for p, _ in pairs], [r for _, r in pairs])):
                self._memo[key] = float(value)
        return np.asarray([self._memo[k] for k in keys])

    def bertscore_check(self, task: str, predictions: Sequence[str], references: Sequence[str]) -> float | None:
        if self.specs[task].metric != "bertscore":
            return None
        if self._bertscore is None:
            self._bertscore = CachedBertScore()
        return self._bertscore.check(predictions, references)


def answer_queries(head: Any, kind: str, queries: Sequence[Query], score_name: str, scorer: Scorer,
                   bar: float) -> Answers:
    texts = [q.input for q in queries]
    if kind == "entities":
        answers = head.answer(texts)
    else:
        answers = head.answer_from_vectors(head.encoder.encode(texts), texts=texts)  # a lexical head needs them
    predictions = [a.text for a in answers]
    score = scorer(queries[0].task, predictions, [q.reference for q in queries]) if queries else np.zeros(0)
    return Answers(_uncertainty(answers, score_name), score, score >= bar - 1e-9, predictions)


# -- the cascade -------------------------------------------------------------------------------
def cascade_outcome(uncertainty: np.ndarray, threshold: float | None, specialist_score: np.ndarray,
                    specialist_cost: np.ndarray, frontier_score: np.ndarray,
                    frontier_cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accepted, cost paid, quality got) per query for specialist -> frontier.

    A specialist with no threshold is skipped, as the serving cascade skips it, and costs nothing.
    """
    if threshold is None:
        accepted = np.zeros(len(uncertainty), dtype=bool)
        return accepted, frontier_cost.copy(), frontier_score.copy()
    accepted = ~np.isnan(uncertainty) & (uncertainty <= threshold)
    cost = specialist_cost + np.where(accepted, 0.0, frontier_cost)
    return accepted, cost, np.where(accepted, specialist_score, frontier_score)


def quality_thresholds(uncertainty: np.ndarray, correct: np.ndarray, tasks: Sequence[str],
                       budgets: Mapping[str, float], delta: float) -> dict[str, float | None]:
    """The quality rule's threshold per task (one cheap tier): what the embedded default ships."""
    calibrator = ConformalCalibrator(method="quality", delta=delta, epsilon_per_task=dict(budgets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a task left with no threshold is reported as 0% accepted
        calibrator.conformalize(uncertainty, correct, [SPECIALIST] * len(tasks), list(tasks))
    return dict(calibrator.thresholds_.get(SPECIALIST, {}))


@dataclass
class StudentEval:
    """One student on the evaluation half, with the thresholds calibrated on the other half."""

    thresholds: dict[str, float | None]
    accepted: np.ndarray
    cost: np.ndarray
    quality: np.ndarray


def evaluate_student(calibration: Mapping[str, Answers], evaluation: Mapping[str, Answers],
                     eval_queries: Mapping[str, Sequence[Query]], frontier_score: Mapping[str, np.ndarray],
                     budgets: Mapping[str, float], delta: float) -> dict[str, StudentEval]:
    """Thresholds from ``calibration`` alone, read on ``evaluation``, per task."""
    tasks = sorted(calibration)
    u = np.concatenate([calibration[t].uncertainty for t in tasks])
    ok = np.concatenate([calibration[t].correct for t in tasks])
    names = [t for t in tasks for _ in range(len(calibration[t].uncertainty))]
    thresholds = quality_thresholds(u, ok, names, budgets, delta)
    out = {}
    for task in tasks:
        queries = eval_queries[task]
        accepted, cost, quality = cascade_outcome(
            evaluation[task].uncertainty, thresholds.get(task), evaluation[task].score,
            np.array([q.specialist_cost for q in queries]), frontier_score[task],
            np.array([q.frontier_cost for q in queries]),
        )
        out[task] = StudentEval({task: thresholds.get(task)}, accepted, cost, quality)
    return out


# -- mining and budgets --------------------------------------------------------------------------
def build_students(failures: Sequence[Failure], labels: np.ndarray, selected: Sequence[int],
                   traffic: Sequence[Query], seed: int) -> tuple[list[Query], list[Query]]:
    """(targeted, untargeted) extra examples of equal size.

    Targeted: each distinct failed query of the selected clusters. Untargeted: as many queries
    drawn without replacement from all traffic, failed or not.
    """
    by_key = {(q.task, q.input): q for q in traffic}
    wanted = set(int(c) for c in selected)
    targeted = list({(f.task, f.input): by_key[(f.task, f.input)]
                     for f, label in zip(failures, labels) if int(label) in wanted}.values())
    distinct = list(by_key.values())
    picks = np.random.default_rng(20_000 + seed).choice(len(distinct), size=len(targeted), replace=False)
    return targeted, [distinct[i] for i in sorted(picks)]


def _failure(query: Query, reason: str, answered_by: str) -> Failure:
    return Failure(
        query_id=query.id, task=query.task, input=query.input, reason=reason,  # type: ignore[arg-type]
        failed_tiers=(SPECIALIST,), target_tier=FRONTIER, answered_by=answered_by,
        escalation_cost_usd=query.frontier_cost, teacher_answer=query.answer,
        attempt_costs={SPECIALIST: query.specialist_cost, FRONTIER: query.frontier_cost},
    )


# -- statistics ------------------------------------------------------------------------------
def cost_reduction(cost: np.ndarray, frontier: np.ndarray) -> float:
    """1 - summed cost / summed frontier-only cost (0 without frontier cost)."""
    return float(1 - cost.sum() / frontier.sum()) if frontier.sum() > 0 else 0.0


def bootstrap_ratio(seed_rows: Sequence[Mapping[str, np.ndarray]], reps: int, rng_seed: int = 0) -> dict[str, Any]:
    """Bootstrap over seeds, then over each seed's evaluation queries (paired across students).

    Each row holds per-query ``base``, ``targeted``, ``untargeted`` costs and ``frontier`` cost.
    The improvement is the cost reduction (vs frontier-only) minus the base's; the ratio is the
    mean targeted improvement over the mean untargeted one, its CI read over every draw (``ratio_ci``).
    Thresholds stay as calibrated.
    """
    rng = np.random.default_rng(rng_seed)
    ratios, diffs, untargeted = [], [], []
    for _ in range(reps):
        gains = {"targeted": [], "untargeted": []}
        for s in rng.integers(0, len(seed_rows), len(seed_rows)):
            row = seed_rows[s]
            pick = rng.integers(0, len(row["frontier"]), len(row["frontier"]))
            base = cost_reduction(row["base"][pick], row["frontier"][pick])
            for name in gains:
                gains[name].append(cost_reduction(row[name][pick], row["frontier"][pick]) - base)
        t, u = float(np.mean(gains["targeted"])), float(np.mean(gains["untargeted"]))
        diffs.append(t - u)
        untargeted.append(u)
        ratios.append(extended_ratio(t, u))
    return {
        "ratio_ci95": ratio_interval(ratios),
        "ratio_ci_rule": RATIO_CI_RULE,
        "difference_ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "reps": reps,
        "untargeted_at_most_zero_share": float(np.mean(np.asarray(untargeted) <= 0)),
    }


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


# -- the run -------------------------------------------------------------------------------------
def _load_queries(spec: TaskSpec, data_dir: Path, split: str, price: Callable[[str, int, int], float]) -> list[Query]:
    queries = []
    for example in load_examples(task_file(data_dir, spec.name, split)):
        answer = answer_text(example.reference)
        prompt = " ".join(m["content"] for m in spec.messages(example.input))
        completion = estimate_tokens(answer)
        queries.append(Query(
            id=example.id, task=spec.name, input=example.input, reference=example.reference, answer=answer,
            # The specialist reads the raw input; the frontier the full prompt. Tokens are estimated
            # (about four characters each), as the replay engine reports them.
            specialist_cost=price(SPECIALIST, estimate_tokens(example.input), completion),
            frontier_cost=price(FRONTIER, estimate_tokens(prompt), completion),
        ))
    return queries


def run_loop_specialist(
    specs: Mapping[str, TaskSpec], data_dir: str | Path, settings: LoopSpecialistSettings,
    price: Callable[[str, int, int], float], encoder: SpecialistEncoder, score_names: Mapping[str, str],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    data_dir = Path(data_dir)
    tasks = list(settings.tasks)
    scorer = Scorer(specs)
    budgets = {t: 1 - specs[t].quality_target for t in tasks}
    kinds = {t: head_kind_for_parser(specs[t].parser) for t in tasks}
    pools, validation = {}, {}
    for task in tasks:
        rows = _load_queries(specs[task], data_dir, "train", price)
        keep = np.random.default_rng(0).permutation(len(rows))[: settings.pool_per_task]
        pools[task] = [rows[i] for i in sorted(keep)]
        rows = _load_queries(specs[task], data_dir, "validation", price)
        keep = np.random.default_rng(1).permutation(len(rows))[: settings.validation_per_task]
        validation[task] = [rows[i] for i in sorted(keep)]
    # The cached BERTScore must be the task's metric: compare it with bert_score on real pairs.
    checks = {t: scorer.bertscore_check(t, [q.answer for q in pools[t][:8]], [q.answer for q in validation[t][:8]])
              for t in tasks}
    bertscore_check = {t: v for t, v in checks.items() if v is not None}
    frontier_val = {t: scorer(t, [q.answer for q in validation[t]], [q.reference for q in validation[t]])
                    for t in tasks}
    log(f"loaded pools {{{', '.join(f'{t}: {len(pools[t])}' for t in tasks)}}} in {time.perf_counter() - started:.0f}s")

    students = ["base"] + [f"{kind}@{f:g}" for f in settings.fractions for kind in ("targeted", "untargeted")]
    seeds_out: list[dict[str, Any]] = []
    for seed in settings.seeds:
        t0 = time.perf_counter()
        parts = {t: split_pool(len(pools[t]), seed, settings.seed_share, settings.calibration_share,
                               settings.min_traffic) for t in tasks}
        seed_part = {t: [pools[t][i] for i in parts[t]["seed"]] for t in tasks}
        calib_part = {t: [pools[t][i] for i in parts[t]["calibration"]] for t in tasks}
        traffic = {t: [pools[t][i] for i in parts[t]["traffic"]] for t in tasks}
        halves = {t: split_validation(len(validation[t]), seed) for t in tasks}
        val_cal = {t: [validation[t][i] for i in halves[t][0]] for t in tasks}
        val_eval = {t: [validation[t][i] for i in halves[t][1]] for t in tasks}
        front_eval = {t: frontier_val[t][halves[t][1]] for t in tasks}

        # 1. The base specialist, and C per task picked on its own pairs; every student reuses it.
        base_heads, chosen_c = {}, {}
        for task in tasks:
            params = {} if kinds[task] == "cache" else {"seed": seed}
            head = make_head(kinds[task], encoder, **params).fit([q.input for q in seed_part[task]],
                                                                 [q.answer for q in seed_part[task]])
            base_heads[task] = head
            chosen_c[task] = getattr(head, "C_", None)

        # 2. Traffic through base -> frontier, thresholds from the calibration slice of train.
        cal_answers = {t: answer_queries(base_heads[t], kinds[t], calib_part[t], score_names[t], scorer,
                                         specs[t].success_bar) for t in tasks}
        traffic_thresholds = quality_thresholds(
            np.concatenate([cal_answers[t].uncertainty for t in tasks]),
            np.concatenate([cal_answers[t].correct for t in tasks]),
            [t for t in tasks for _ in calib_part[t]], budgets, settings.delta)
        failures: list[Failure] = []
        traffic_summary = {}
        for task in tasks:
            answers = answer_queries(base_heads[task], kinds[task], traffic[task], score_names[task], scorer,
                                     specs[task].success_bar)
            thr = traffic_thresholds.get(task)
            accepted = np.zeros(len(traffic[task]), bool) if thr is None else answers.uncertainty <= thr
            for q, acc, ok in zip(traffic[task], accepted, answers.correct):
                if not acc:
                    failures.append(_failure(q, "escalated", FRONTIER))
                elif not ok:
                    failures.append(_failure(q, "negative_feedback", SPECIALIST))
            traffic_summary[task] = {
                "queries": len(traffic[task]), "base_correct": float(answers.correct.mean()),
                "threshold": thr, "accepted": float(accepted.mean()),
                "escalated": int((~accepted).sum()), "accepted_wrong": int((accepted & ~answers.correct).sum()),
            }

        # 3. Mining: cluster, rank by cost, build each budget's two students.
        clusterer = FailureClusterer(encoder, n_clusters=settings.n_clusters, random_state=seed).fit(failures)
        # Every failure carries both tiers' prices in attempt_costs, so no price-gap fallback is needed.
        ranked = rank_clusters(failures, clusterer.labels_, lambda *a: 0.0)
        all_traffic = [q for t in tasks for q in traffic[t]]
        extras: dict[str, list[Query]] = {}
        budget_rows = []
        for fraction in settings.fractions:
            k = select_clusters([c.cost_usd for c in ranked], fraction)
            selected = [c.cluster for c in ranked[:k]]
            targeted, untargeted = build_students(failures, clusterer.labels_, selected, all_traffic, seed)
            extras[f"targeted@{fraction:g}"], extras[f"untargeted@{fraction:g}"] = targeted, untargeted
            budget_rows.append({"fraction": fraction, "clusters": k, "selected": selected,
                                "covered_cost_share": float(sum(c.share for c in ranked[:k])),
                                "examples": len(targeted),
                                "examples_per_task": {t: sum(q.task == t for q in targeted) for t in tasks}})

        # 4. Each student: refit with the base's C, thresholds on the calibration half, read on the other.
        evals: dict[str, dict[str, StudentEval]] = {}
        for student in students:
            extra = extras.get(student, [])
            cal, ev = {}, {}
            for task in tasks:
                added = [q for q in extra if q.task == task]
                if added:
                    params = {} if kinds[task] == "cache" else {"Cs": [chosen_c[task]], "seed": seed}
                    pairs = seed_part[task] + added
                    head = make_head(kinds[task], encoder, **params).fit([q.input for q in pairs],
                                                                         [q.answer for q in pairs])
                else:
                    head = base_heads[task]
                cal[task] = answer_queries(head, kinds[task], val_cal[task], score_names[task], scorer,
                                           specs[task].success_bar)
                ev[task] = answer_queries(head, kinds[task], val_eval[task], score_names[task], scorer,
                                          specs[task].success_bar)
            evals[student] = evaluate_student(cal, ev, val_eval, front_eval, budgets, settings.delta)

        # Which failure cluster each evaluation query is nearest to, for the per-cluster breakdown.
        eval_cluster = {t: clusterer.predict([q.input for q in val_eval[t]]) for t in tasks}
        seeds_out.append(_seed_record(seed, tasks, students, evals, val_eval, front_eval, eval_cluster, ranked,
                                      budget_rows, traffic_summary, failures, chosen_c, parts, halves))
        log(f"seed {seed}: {len(failures)} failures, budgets "
            f"{[r['examples'] for r in budget_rows]}, {time.perf_counter() - t0:.0f}s")
    report = _summarise(seeds_out, settings, tasks, time.perf_counter() - started)
    report["bertscore_cache_max_abs_diff"] = bertscore_check
    return report


def _seed_record(seed: int, tasks: list[str], students: list[str], evals: dict[str, dict[str, StudentEval]],
                 val_eval: dict[str, list[Query]], front_eval: dict[str, np.ndarray],
                 eval_cluster: dict[str, np.ndarray], ranked: list[Any], budget_rows: list[dict[str, Any]],
                 traffic_summary: dict[str, Any], failures: list[Failure], chosen_c: dict[str, Any],
                 parts: dict[str, dict[str, np.ndarray]],
                 halves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    frontier_cost = {t: np.array([q.frontier_cost for q in val_eval[t]]) for t in tasks}
    per_student = {}
    for student in students:
        per_task = {}
        for task in tasks:
            e = evals[student][task]
            per_task[task] = {
                "threshold": e.thresholds[task], "specialist_share": float(e.accepted.mean()),
                "cost_reduction": cost_reduction(e.cost, frontier_cost[task]),
                "quality_retention": float(e.quality.sum() / front_eval[task].sum()),
            }
        cost = np.concatenate([evals[student][t].cost for t in tasks])
        front = np.concatenate([frontier_cost[t] for t in tasks])
        per_student[student] = {
            "cost_reduction": cost_reduction(cost, front),
            "task_mean_cost_reduction": float(np.mean([per_task[t]["cost_reduction"] for t in tasks])),
            "quality_retention": float(np.concatenate([evals[student][t].quality for t in tasks]).sum()
                                       / np.concatenate([front_eval[t] for t in tasks]).sum()),
            "specialist_share": float(np.concatenate([evals[student][t].accepted for t in tasks]).mean()),
            "per_task": per_task,
        }
    # Per cluster: the money each student saves on the evaluation queries nearest to that cluster.
    labels = np.concatenate([eval_cluster[t] for t in tasks])
    front = np.concatenate([frontier_cost[t] for t in tasks])
    per_cluster = []
    for rank, c in enumerate(ranked, start=1):
        rows = labels == c.cluster
        saved = {s: float((front[rows] - np.concatenate([evals[s][t].cost for t in tasks])[rows]).sum())
                 for s in students}
        per_cluster.append({"rank": rank, "cluster": c.cluster, "failures": c.size, "tasks": c.tasks,
                            "reasons": c.reasons, "cost_share": c.share, "examples": c.examples[:2],
                            "eval_queries": int(rows.sum()), "eval_frontier_cost": float(front[rows].sum()),
                            "saved_usd": saved})
    return {
        "seed": seed,
        "split_sizes": {t: {k: int(len(v)) for k, v in parts[t].items()} | {
            "validation_calibration": int(len(halves[t][0])), "validation_evaluation": int(len(halves[t][1]))}
            for t in tasks},
        "C": chosen_c,
        "traffic": traffic_summary,
        "failures": {"total": len(failures), "escalated": sum(f.reason == "escalated" for f in failures),
                     "accepted_wrong": sum(f.reason == "negative_feedback" for f in failures)},
        "budgets": budget_rows,
        "students": per_student,
        "clusters": per_cluster,
        # Per-query costs for the bootstrap (dropped from the written JSON).
        "_costs": {s: np.concatenate([evals[s][t].cost for t in tasks]) for s in students} | {"frontier": front},
    }


def _summarise(seeds: list[dict[str, Any]], settings: LoopSpecialistSettings, tasks: list[str],
               seconds: float) -> dict[str, Any]:
    def gain(record: dict[str, Any], student: str, key: str = "cost_reduction", task: str | None = None) -> float:
        pick = (lambda s: record["students"][s]["per_task"][task]) if task else (lambda s: record["students"][s])
        return pick(student)[key] - pick("base")[key]

    curve = []
    for fraction in settings.fractions:
        t_name, u_name = f"targeted@{fraction:g}", f"untargeted@{fraction:g}"
        t_gain = [gain(r, t_name) for r in seeds]
        u_gain = [gain(r, u_name) for r in seeds]
        rows = [{"base": r["_costs"]["base"], "targeted": r["_costs"][t_name], "untargeted": r["_costs"][u_name],
                 "frontier": r["_costs"]["frontier"]} for r in seeds]
        boot = bootstrap_ratio(rows, settings.bootstrap, rng_seed=int(fraction * 1000))
        mean_u = float(np.mean(u_gain))
        in_selected = []
        for r in seeds:
            budget = _budget(r, fraction)
            chosen = set(budget["selected"])
            split = {}
            for name in (t_name, u_name):
                extra = [(c["cluster"] in chosen, c["saved_usd"][name] - c["saved_usd"]["base"]) for c in r["clusters"]]
                inside = sum(v for is_chosen, v in extra if is_chosen)
                outside = sum(v for is_chosen, v in extra if not is_chosen)
                split[name] = (inside, outside)
            in_selected.append(split)
        curve.append({
            "fraction": fraction,
            "clusters": _mean_sd([_budget(r, fraction)["clusters"] for r in seeds]),
            "covered_cost_share": _mean_sd([_budget(r, fraction)["covered_cost_share"]
                                            for r in seeds]),
            "examples": _mean_sd([_budget(r, fraction)["examples"] for r in seeds]),
            "targeted_gain": _mean_sd(t_gain), "untargeted_gain": _mean_sd(u_gain),
            "targeted_gain_per_seed": t_gain, "untargeted_gain_per_seed": u_gain,
            "ratio": point_ratio(float(np.mean(t_gain)), mean_u),
            **boot,
            "targeted_quality_retention": _mean_sd([r["students"][t_name]["quality_retention"] for r in seeds]),
            "untargeted_quality_retention": _mean_sd([r["students"][u_name]["quality_retention"] for r in seeds]),
            "saved_usd_over_base_in_selected_clusters": {
                name: _mean_sd([s[name][0] for s in in_selected]) for name in (t_name, u_name)},
            "saved_usd_over_base_outside_selected_clusters": {
                name: _mean_sd([s[name][1] for s in in_selected]) for name in (t_name, u_name)},
            "per_task": {task: {
                "targeted_gain": _mean_sd([gain(r, t_name, task=task) for r in seeds]),
                "untargeted_gain": _mean_sd([gain(r, u_name, task=task) for r in seeds]),
                "targeted_examples": _mean_sd([_budget(r, fraction)["examples_per_task"][task] for r in seeds]),
            } for task in tasks},
        })
    students = list(seeds[0]["students"])
    shares = {s: {"specialist_share": _mean_sd([r["students"][s]["specialist_share"] for r in seeds]),
                  "cost_reduction": _mean_sd([r["students"][s]["cost_reduction"] for r in seeds]),
                  "task_mean_cost_reduction": _mean_sd([r["students"][s]["task_mean_cost_reduction"] for r in seeds]),
                  "quality_retention": _mean_sd([r["students"][s]["quality_retention"] for r in seeds]),
                  "per_task": {t: {k: _mean_sd([r["students"][s]["per_task"][t][k] for r in seeds])
                                   for k in ("specialist_share", "cost_reduction", "quality_retention")}
                               for t in tasks}}
              for s in students}
    for r in seeds:
        r.pop("_costs")
    return {
        "benchmark": "loop-specialist",
        "settings": vars(settings),
        "seconds": seconds,
        "headline_fraction": settings.headline_fraction,
        "budget_curve": curve,
        "students": shares,
        "seeds": seeds,
    }


def _budget(record: dict[str, Any], fraction: float) -> dict[str, Any]:
    return next(b for b in record["budgets"] if b["fraction"] == fraction)
