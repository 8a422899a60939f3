"""One iteration of the closed loop: mine, distil (targeted and untargeted), evaluate, gate, publish.

The student is one cheap tier: a transformers tier gets a LoRA adapter that continues the one it
serves, a specialist tier a new artifact whose touched heads are refitted on their pairs plus the
mined ones (:mod:`routenlp_ray.loop.specialist_student`). Either way the result is a folder that a
release carries for that tier, which the tier's replicas hot-swap to.

Each stage writes its result under ``<workdir>/<run_id>/``; running the same ``run_id``
again skips finished stages and resumes Ray Train runs from their checkpoints, so a run that
died half-way picks up where it stopped and a finished run changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.conformal.thresholds import ThresholdTable, load_thresholds
from routenlp_ray.loop.distill import DistillConfig, DistillExample, train_lora_adapter
from routenlp_ray.loop.mining import NoveltyFn, Targeting
from routenlp_ray.loop.rehearsal import write_lineage
from routenlp_ray.loop.specialist_student import SpecialistRefitSettings
from routenlp_ray.recording.coverage import calibrate_table, cascade_outcome
from routenlp_ray.recording.tables import TaskTable, in_held_out_half, load_tables
from routenlp_ray.releases import ReleaseStore
from routenlp_ray.telemetry.querylog import read_records

logger = logging.getLogger("routenlp.loop")

VARIANTS = ("base", "targeted", "untargeted")
Student = Literal["targeted", "untargeted"]


class LoopSettings(StrictModel):
    """What one iteration spends and how it judges the result."""

    student_tier: str | None = Field(
        None,
        description="Cheap tier to distil into (transformers or specialist); default: the cheapest transformers tier, "
                    "else the cheapest specialist tier.",
    )
    top_clusters: int = Field(3, ge=1, description="Costliest failure clusters whose queries are distilled.")
    top_cost_share: float | None = Field(
        None, gt=0, le=1,
        description="Instead of top_clusters: the fewest costliest clusters covering this share of failure cost.",
    )
    n_clusters: int | None = Field(None, ge=1, description="Fixed cluster count; None picks it by silhouette.")
    targeting: Targeting = Field(
        "novel_first",
        description="How failure clusters are ranked. cost: by the cost they cause (the paper's rule). novel_first: "
                    "by the cost of the failures the student cannot express today (a label its head never had, an "
                    "entity type it never tagged, a task it has no head or threshold for), then by cost, and the "
                    "budget is filled with those failures first: they are the ones distillation surely fixes, where "
                    "a failure in known territory is often a hard case more data does not. Falls back to cost when "
                    "there are none.",
    )
    since: str | None = Field(None, description="Only mine queries logged at or after this ISO time.")
    budget_examples: int = Field(64, ge=1, description="Training examples for each student (targeted and untargeted).")
    students: list[Student] = Field(
        default_factory=lambda: ["targeted", "untargeted"], min_length=1,
        description="Students to distil and evaluate: both to compare them (the default), or one, as a deployment "
                    "that only ever ships that kind would run. The untargeted one gets as many examples as the "
                    "targeted set has either way.",
    )
    publish_student: Student = Field("targeted", description="The student a passed gate publishes; one of students.")
    rehearsal_share: float = Field(
        0.25, ge=0, lt=1,
        description="LoRA students: the share of each student's budget drawn from the pairs its current adapter was "
                    "distilled on (see routenlp_ray.loop.rehearsal), so what the new set leaves out is not "
                    "forgotten. Every student gets the same share; a specialist refit keeps its base pairs anyway.",
    )
    distill: DistillConfig = Field(
        default_factory=lambda: DistillConfig(max_steps=40, batch_size=4, max_seq_len=384, checkpoint_every=20),
        description="LoRA and Ray Train settings, shared by both students so the budgets are equal.",
    )
    specialist: SpecialistRefitSettings = Field(
        default_factory=SpecialistRefitSettings, description="How a specialist student tier is refitted.",
    )
    eval_tasks: list[str] | None = Field(None, description="Tasks to evaluate; default: tasks with a metric.")
    eval_split: str = Field("validation", description="Data split the held-out slice comes from.")
    eval_per_task: int = Field(40, ge=4, description="Held-out examples per task.")
    alpha: float = Field(0.1, gt=0, lt=1, description="Miscoverage of the recalibrated thresholds (coverage rule).")
    calibration: Literal["coverage", "quality"] = Field(
        "coverage",
        description="How a student's thresholds are set: coverage (split-conformal at miscoverage alpha, the "
                    "paper's rule) or quality (each task's accepted-and-wrong budget, 1 - quality_target, at "
                    "confidence 1 - delta: the rule the embedded default's thresholds use). A release carries "
                    "these thresholds into the service, so use the rule the service was calibrated with.",
    )
    delta: float = Field(0.1, gt=0, lt=1, description="Quality rule: 1 - the confidence of its guarantee.")
    gate_tolerance: float = Field(
        0.0, ge=0, description="How far a task's quality retention may fall below the current model's and still pass."
    )
    gate_rule: Literal["no_worse", "meets_target"] = Field(
        "no_worse",
        description="no_worse: every task's quality retention at or above the current model's (less gate_tolerance). "
                    "meets_target: at or above the current model's or the task's quality_target, whichever is lower: "
                    "a release may spend quality the current model does not, down to the target (what lets a task "
                    "the frontier alone served get a cheap tier).",
    )
    gate_cost_tolerance: float | None = Field(
        None, ge=0,
        description="Also gate on cost: how far the volume-weighted cost reduction may fall below the current "
                    "model's (0: cost may never rise). None: quality only.",
    )
    gate_scope: Literal["release", "task"] = Field(
        "task",
        description="release: the whole student passes the gate or nothing is published. task (specialist students; "
                    "a LoRA adapter cannot be split): each refitted head is judged on its own task, by the same "
                    "quality rule and, with gate_cost_tolerance, on that task's cost; the heads that pass are "
                    "published with their thresholds and the others keep the current head and threshold. One head "
                    "that got worse then no longer holds back another task's first head.",
    )
    seed: int = Field(0, description="Seed of the clustering, the untargeted sample and the held-out slice.")
    eval_seed: int | None = Field(
        None, description="Seed of the held-out slice alone, so runs with different seeds read the same queries.",
    )

    @model_validator(mode="after")
    def _publishes_a_student(self) -> "LoopSettings":
        if self.publish_student not in self.students:
            raise ValueError(f"publish_student={self.publish_student!r} is not among students={self.students!r}")
        if len(set(self.students)) != len(self.students):
            raise ValueError(f"students has duplicates: {self.students!r}")
        return self


@dataclass
class VariantMetrics:
    """A student's cascade on the held-out slice: per task and volume-weighted overall."""

    per_task: dict[str, dict[str, float]]
    cost_reduction: float
    quality_retention: float
    cheap_accuracy: float


@dataclass
class IterationResult:
    run_id: str
    published: str | None
    gate_passed: bool
    gate_reasons: list[str]
    report_path: str
    report: dict[str, Any]


class Iteration:
    """Runs the stages for one ``run_id``; each stage is cached in the run folder."""

    def __init__(
        self,
        config: RouteNLPConfig,
        settings: LoopSettings,
        log_uri: str,
        data_dir: str | Path,
        workdir: str | Path,
        run_id: str,
        encoder: Any = None,
        frontier_call: Callable[[str, str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.log_uri = log_uri
        self.data_dir = Path(data_dir)
        self.run_dir = Path(workdir) / run_id
        self.run_id = run_id
        self._encoder = encoder
        if frontier_call is not None:  # a caller that already has the frontier up (a benchmark) lends it
            self.__dict__["frontier_call"] = frontier_call
        self.student = self._student_tier()

    # -- plumbing ---------------------------------------------------------------------------
    def _student_tier(self) -> TierConfig:
        name = self.settings.student_tier
        cheap = [t for t in self.config.tiers[:-1] if t.release_artifact_field() is not None]
        if name is not None:
            candidates = [t for t in cheap if t.name == name]
        else:  # the LoRA student first, as before specialist tiers could be distilled into
            candidates = sorted(cheap, key=lambda t: t.engine.type != "transformers")
        if not candidates:
            wanted = f"tier {name!r}" if name else "a cheaper tier"
            raise ConfigError(f"loop needs {wanted} with a transformers or specialist engine to distil into")
        student = candidates[0]
        field = student.release_artifact_field()
        # The tier as it serves now: the current release's artifact, or (as the tiers read a release
        # without one) the configured one.
        release = ReleaseStore(self.config.releases.path).current() if self.config.releases.path else None
        self.current_release = release
        released = release.adapter_for(student.name) if release is not None else None
        artifact = str(released) if released is not None else getattr(student.engine, field)
        self.starts_from: dict[str, Any] = {"release": release.version if release else None, "artifact": artifact}
        return student.model_copy(update={"engine": student.engine.model_copy(update={field: artifact})})

    @property
    def is_specialist(self) -> bool:
        return self.student.engine.type == "specialist"

    @property
    def current_artifact(self) -> str | None:
        """What the student tier serves now: its LoRA adapter (or None, the bare model) or specialist artifact."""
        return getattr(self.student.engine, self.student.release_artifact_field())

    @functools.cached_property
    def student_tasks(self) -> set[str] | None:
        """Tasks the student can learn: a specialist's heads and its new-task candidates; None (every task) for LoRA."""
        if not self.is_specialist:
            return None
        return set(_head_tasks(self.current_artifact)) | set(self.new_task_kinds)

    @functools.cached_property
    def new_task_kinds(self) -> dict[str, str]:
        """Tasks a specialist student has no head for yet but may get its first one for, with that head's kind."""
        if not self.is_specialist or not self.settings.specialist.new_tasks:
            return {}
        from routenlp_ray.specialists.training import head_kind_for_parser

        heads = set(_head_tasks(self.current_artifact))
        return {t.name: head_kind_for_parser(t.parser) for t in self.config.tasks
                if t.name not in heads and t.metric != "none" and t.parser in ("label", "entities", "text")}

    @functools.cached_property
    def uncovered_tasks(self) -> dict[str, str]:
        """Tasks the student could serve but no cheap tier does now: the frontier's answers on them are failures
        the loop mines. A task is uncovered when the student has no head for it, or has one the thresholds skip
        (no threshold could be certified), and no other cheap tier serves it."""
        if not self.is_specialist:
            return {}
        table, default = self.current_thresholds(), self.config.cascade.default_threshold
        skipped = {t for t in _head_tasks(self.current_artifact) if table.resolve(self.student.name, t, default) is None}
        cheap = [t for t in self.config.tiers[:-1] if t.name != self.student.name]
        return {task: self.student.name for task in sorted(set(self.new_task_kinds) | skipped)
                if not any(t.serves(task) for t in cheap)}

    @functools.cached_property
    def frontier_call(self) -> Callable[[str, str], Awaitable[str | None]] | None:
        # Built once: a replay frontier reads every recorded answer when it starts.
        return frontier_caller(self.config)

    def _stage(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.run_dir / "stages" / f"{name}.json"
        if path.exists():
            logger.info("stage %s: done already (%s)", name, path)
            return json.loads(path.read_text())
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=_jsonable))
        tmp.replace(path)
        return result

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from routenlp_ray.models.encoder import SentenceEncoder

            self._encoder = SentenceEncoder()
        return self._encoder

    # -- stages -----------------------------------------------------------------------------
    def mine(self) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            from routenlp_ray.loop.mining import mine, write_cluster_report

            result = mine(
                self.log_uri, self.config, self.encoder, top_k=self.settings.top_clusters,
                since=self.settings.since, n_clusters=self.settings.n_clusters, frontier_call=self.frontier_call,
                random_state=self.settings.seed, top_cost_share=self.settings.top_cost_share,
                tasks=self.student_tasks, uncovered=self.uncovered_tasks, novelty=self.novelty(),
                targeting=self.settings.targeting, min_failures=self.settings.budget_examples,
            )
            write_cluster_report(
                result.clusters, self.run_dir / "clusters.md", self.run_dir / "clusters.json",
                meta={"run_id": self.run_id, "queries": result.n_queries, "failures": len(result.failures)},
            )
            return {
                "n_queries": result.n_queries,
                "n_failures": len(result.failures),
                "clusters": [c.to_dict() for c in result.clusters],
                "top_clusters": result.top_clusters,
                "teacher": [asdict(e) for e in result.teacher.examples],
                "teacher_skipped": result.teacher.skipped,
            }

        return self._stage("mine", compute)

    def training_sets(self, mined: dict[str, Any]) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            targeted = [e for e in mined["teacher"] if self._learnable(e["task"])]
            rng = random.Random(self.settings.seed)
            rng.shuffle(targeted)
            if self.settings.targeting == "novel_first":
                targeted.sort(key=lambda e: not e.get("novel", False))  # stable: still shuffled within each part
            budget = min(self.settings.budget_examples, len(targeted))
            if budget == 0:
                raise ValueError("no teacher examples were mined from the query log: nothing to distil")
            pool = self.rehearsal_pool
            rehearsed = min(len(pool), round(self.settings.rehearsal_share * budget))
            targeted = targeted[: budget - rehearsed] + rng.sample(pool, rehearsed)
            untargeted = (self._random_traffic(budget - rehearsed, rng) + rng.sample(pool, rehearsed)
                          if "untargeted" in self.settings.students else [])
            return {"budget": budget, "targeted": targeted, "untargeted": untargeted, "rehearsed": rehearsed,
                    "rehearsal_pool": len(pool)}

        return self._stage("training_sets", compute)

    @functools.cached_property
    def rehearsal_pool(self) -> list[dict[str, str]]:
        """A LoRA student's earlier distillation pairs (none for a specialist, or with rehearsal off); read once."""
        if self.is_specialist or self.settings.rehearsal_share == 0:
            return []
        from routenlp_ray.loop.rehearsal import earlier_pairs

        return [p for p in earlier_pairs(self.student.engine.adapter_path, self.config) if self._learnable(p["task"])]

    def novelty(self) -> NoveltyFn | None:
        """Which teacher answers the specialist's current heads cannot express (None for a LoRA student)."""
        if not self.is_specialist or self.current_artifact is None:
            return None
        from routenlp_ray.specialists.artifact import read_head
        from routenlp_ray.specialists.bio import parse_entity_answer

        folder = Path(self.current_artifact)
        known: dict[str, tuple[str, set[str]]] = {}
        for task in _head_tasks(folder):
            head = read_head(folder / task)
            classes = [str(c) for c in head.get("classes", [])]
            if head.get("kind") in ("entities", "finetuned_entities"):
                known[task] = ("entities", {c.split("-", 1)[1] for c in classes if "-" in c})
            elif head.get("kind") in ("label", "finetuned_label"):
                known[task] = ("label", set(classes))

        def novel(task: str, answer: str) -> bool:
            kind, seen = known.get(task, ("", set()))
            if kind == "label":
                return answer.strip() not in seen
            if kind == "entities":
                return any(str(e.get("type")) not in seen for e in parse_entity_answer(answer))
            return False  # an answer cache or a task with no head (those are "uncovered" failures)

        return novel

    def _learnable(self, task: str) -> bool:
        known = any(t.name == task for t in self.config.tasks)
        return known and (self.student_tasks is None or task in self.student_tasks)

    def _random_traffic(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        """The same number of examples drawn uniformly from logged traffic, with the frontier as teacher."""
        from routenlp_ray.loop.mining import logged_since

        # The same window of the log the targeted set was mined from.
        queries = [q for q in logged_since(read_records(self.log_uri, "queries"), self.settings.since)
                   if q.get("status") == "ok" and self._learnable(q["task"])]
        rng.shuffle(queries)
        frontier = self.config.frontier.name
        call = self.frontier_call
        out: list[dict[str, Any]] = []
        for query in queries:
            if len(out) == n:
                break
            answer = query["answer"] if query.get("answered_by") == frontier and not query.get("fallback") else None
            source = "log"
            if answer is None and call is not None:
                answer, source = asyncio.run(call(query["task"], query["input"])), "frontier"
            if answer:
                out.append({"task": query["task"], "input": query["input"], "answer": answer, "source": source,
                            "query_id": query["id"]})
        return out

    def train(self, sets: dict[str, Any]) -> dict[str, Any]:
        """Both students, with equal data; each result's ``artifact_dir`` is the folder a release would carry."""
        if self.is_specialist:
            return self._train_specialists(sets)
        results = {}
        for variant in self.settings.students:
            def compute(variant: str = variant) -> dict[str, Any]:
                examples = [
                    DistillExample.for_task(self.config.task(e["task"]), e["input"], e["answer"]) for e in sets[variant]
                ]
                # Both students continue from the adapter the tier serves now (the last release), if any.
                result = train_lora_adapter(
                    self.student.engine.model_copy(update={"adapter_path": None}), examples, self.settings.distill,
                    self.run_dir / "adapters" / variant, storage_path=self.run_dir / "ray_train",
                    run_name=f"{self.run_id}-{variant}", init_adapter=self.student.engine.adapter_path,
                )
                # The adapter carries its lineage's pairs: the next iteration rehearses them.
                write_lineage(result.adapter_dir, self.rehearsal_pool, sets[variant])
                return result.model_dump(mode="json")

            results[variant] = self._stage(f"train_{variant}", compute)
            results[variant]["artifact_dir"] = results[variant]["adapter_dir"]
        return results

    def _train_specialists(self, sets: dict[str, Any]) -> dict[str, Any]:
        from routenlp_ray.loop.specialist_student import base_pairs, refit_specialist

        artifact = self.current_artifact
        heads = set(_head_tasks(artifact))
        touched = sorted({e["task"] for v in self.settings.students for e in sets[v]} & heads)
        pairs = None
        results = {}
        for variant in self.settings.students:
            def compute(variant: str = variant) -> dict[str, Any]:
                nonlocal pairs
                if pairs is None:  # read once for both students; a finished stage never needs them
                    pairs = base_pairs(artifact, touched, self.config, self.data_dir, self.settings.specialist)
                return refit_specialist(
                    artifact, pairs, sets[variant], self.run_dir / "specialists" / variant,
                    f"loop-{self.run_id}-{variant}", self.settings.specialist,
                    storage_path=self.run_dir / "ray_train", run_name=f"{self.run_id}-{variant}",
                    new_task_kinds=self.new_task_kinds,
                )

            results[variant] = self._stage(f"train_{variant}", compute)
        return results

    @property
    def eval_tasks(self) -> list[str]:
        return self.settings.eval_tasks or [
            t.name for t in self.config.tasks if t.metric != "none" and _has_split(self.data_dir, t, self.settings.eval_split)
        ]

    def fit_current_thresholds(self) -> dict[str, float | None]:
        """The loop's threshold rule on the current model's answers to the whole held-out slice."""
        tables = self._record("base", self.current_artifact, self.eval_tasks)
        return {t.task: self.threshold_for(t) for t in tables}

    def evaluate(self, trained: dict[str, Any]) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            tasks = self.eval_tasks
            out: dict[str, Any] = {"tasks": tasks}
            for variant in self.variants:
                # "base" is the tier as it serves now: its current artifact (or, for a LoRA tier, the bare model).
                artifact = trained[variant]["artifact_dir"] if variant != "base" else self.current_artifact
                tables = self._record(variant, artifact, tasks)
                out[variant] = asdict(_cascade_metrics(tables, self.threshold_for))
            return out

        return self._stage("evaluate", compute)

    def variant_config(self, artifact: str | None) -> RouteNLPConfig:
        """The student (serving ``artifact``) in front of the frontier: the two-tier cascade a student is judged in."""
        engine = self.student.engine.model_copy(update={self.student.release_artifact_field(): artifact})
        # Judged on every task it could take on, not only those its tier serves today: a student
        # that became right on a task is how that task gets a cheap tier. A specialist takes on
        # only the tasks its artifact has heads for.
        tasks = _head_tasks(artifact) if self.is_specialist else None
        student = self.student.model_copy(update={"engine": engine, "tasks": tasks})
        return self.config.model_copy(update={"tiers": [student, self.config.frontier]})

    def records_dir(self, variant: str) -> Path:
        if variant != "base":
            return self.run_dir / "records" / variant
        # The current model's answers depend only on its adapter and the held-out slice, so runs in
        # one workdir that share both (seeds of one experiment, budgets) record them once.
        s = self.settings
        key = json.dumps([_artifact_fingerprint(self.current_artifact), s.eval_split, s.eval_per_task,
                          self._eval_seed])
        return self.run_dir.parent / "base-records" / hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def _eval_seed(self) -> int:
        return self.settings.seed if self.settings.eval_seed is None else self.settings.eval_seed

    def _record(self, variant: str, artifact: str | None, tasks: list[str]) -> list[TaskTable]:
        from routenlp_ray.recording import Recorder
        from routenlp_ray.recording.recorder import DEFAULT_RECORD_MAX_TOKENS
        from routenlp_ray.tasks.data import load_examples

        config = self.variant_config(artifact)
        folder = self.records_dir(variant)
        recorder = Recorder(config, folder, max_tokens=DEFAULT_RECORD_MAX_TOKENS)
        for task in tasks:
            examples = load_examples(
                config.task(task).data_file(self.data_dir, self.settings.eval_split),
                limit=self.settings.eval_per_task, seed=self._eval_seed,
            )
            recorder.record(task, self.settings.eval_split, examples, progress=False)
        return load_tables(config, [folder], self.data_dir, tasks, [self.settings.eval_split])

    @property
    def variants(self) -> list[str]:
        """What an iteration evaluates: the current model ("base") and each student it distils."""
        return ["base", *self.settings.students]

    def gate(self, evaluation: dict[str, Any], variant: str | None = None) -> tuple[bool, list[str]]:
        """The published student (or ``variant``) must not lower any task's quality retention against the
        current model (or, by ``gate_rule``, below its quality target), nor (with ``gate_cost_tolerance``)
        the overall cost reduction."""
        variant = variant or self.settings.publish_student
        base, new = evaluation["base"]["per_task"], evaluation[variant]["per_task"]
        reasons = self._quality_reasons(base, new, evaluation["tasks"])
        tolerance = self.settings.gate_cost_tolerance
        before, after = evaluation["base"]["cost_reduction"], evaluation[variant]["cost_reduction"]
        if tolerance is not None and after < before - tolerance:
            reasons.append(f"cost reduction {after:.3f} < current {before:.3f}: the release would cost more")
        return (not reasons), reasons

    def task_gate(self, evaluation: dict[str, Any], tasks: Sequence[str]) -> dict[str, list[str]]:
        """``gate_scope: task``: each of ``tasks`` judged alone; task -> reasons it fails (empty: it passes)."""
        variant = self.settings.publish_student
        base, new = evaluation["base"]["per_task"], evaluation[variant]["per_task"]
        tolerance = self.settings.gate_cost_tolerance
        out: dict[str, list[str]] = {}
        for task in tasks:
            if task not in new:
                continue
            reasons = [r for r in self._quality_reasons(base, new, [task])]
            before, after = base[task]["cost_reduction"], new[task]["cost_reduction"]
            if tolerance is not None and after < before - tolerance:
                reasons.append(f"{task}: cost reduction {after:.3f} < current {before:.3f}")
            out[task] = reasons
        return out

    def _quality_reasons(self, base: dict[str, Any], new: dict[str, Any], tasks: Sequence[str]) -> list[str]:
        reasons = []
        for task in tasks:
            before, after = base[task]["quality_retention"], new[task]["quality_retention"]
            floor = before
            if self.settings.gate_rule == "meets_target":
                floor = min(before, self.config.task(task).quality_target)
            if after < floor - self.settings.gate_tolerance:
                reasons.append(f"{task}: quality retention {after:.3f} < {'current' if floor == before else 'target'} "
                               f"{floor:.3f}")
        return reasons

    def partial_artifact(self, candidate: str | Path, tasks: Sequence[str]) -> Path:
        """The current artifact with the candidate's heads for ``tasks``: what a task-scoped gate publishes."""
        from routenlp_ray.specialists.artifact import read_manifest, write_artifact

        target = self.run_dir / "published-artifact"
        if target.exists():
            return target
        new, current = Path(candidate), self.current_artifact
        new_manifest = read_manifest(new)
        heads = {}
        if current is not None:
            current_manifest = read_manifest(current)
            heads = {t: (Path(current) / t, e) for t, e in current_manifest.tasks.items()}
        heads.update({t: (new / t, new_manifest.tasks[t]) for t in tasks})
        return write_artifact(target, f"{new_manifest.version}-partial", new_manifest.encoder.source, heads)

    def recalibrate(self, trained: dict[str, Any] | None, evaluation: dict[str, Any],
                    tasks: Sequence[str] | None = None) -> Path:
        """Thresholds for the new student, calibrated on all of its held-out answers. With ``tasks``, only
        theirs: the heads kept from the current model get theirs refitted on the same rows (the newest
        labelled data), so what is served keeps its quality target as traffic drifts. ``trained`` None:
        only the current model's."""
        fitted: dict[str, float | None] = {}
        if tasks is not None:
            fitted = {t: v for t, v in self.fit_current_thresholds().items() if t not in tasks}
        if trained is not None:
            published = self.settings.publish_student
            config = self.variant_config(trained[published]["artifact_dir"])
            tables = load_tables(config, [self.records_dir(published)], self.data_dir, evaluation["tasks"],
                                 [self.settings.eval_split])
            # The student is the first tier of each table; the frontier (last) has no threshold.
            fitted |= {t.task: self.threshold_for(t) for t in tables if tasks is None or t.task in tasks}
        merged = self.current_thresholds().merged({self.student.name: fitted}, version=f"loop-{self.run_id}")
        path = self.run_dir / "thresholds.json"
        merged.model_copy(update={"alpha": self.settings.alpha}).save(path)
        return path

    def threshold_for(self, table: TaskTable) -> float | None:
        """The student's threshold for one task from these rows (student first, frontier last), by the loop's rule."""
        s = self.settings
        if s.calibration == "quality":
            budget = 1 - self.config.task(table.task).quality_target
            return calibrate_table(table, budget, "quality", delta=s.delta)[0]
        return calibrate_table(table, s.alpha)[0]

    def current_thresholds(self) -> ThresholdTable:
        """The thresholds the service runs now: the current release's, else the configured ones."""
        release = self.current_release
        if release is not None and release.thresholds_path is not None:
            return ThresholdTable.load(release.thresholds_path)
        return load_thresholds(self.config.cascade)

    def release_artifacts(self, student_artifact: str | Path) -> dict[str, Path]:
        """What a new release carries per tier: the student's new artifact, and every other tier's current one.

        A release is the whole served state, and a tier reads a release without an artifact for it
        as "the configured one": leaving out another tier's artifact (the LoRA student's, when
        this iteration refits the specialist) would silently roll that tier back.
        """
        release = self.current_release
        carried = {} if release is None else {
            tier: release.adapter_for(tier) for tier in release.manifest.adapters if tier != self.student.name}
        return {**{t: p for t, p in carried.items() if p is not None}, self.student.name: Path(student_artifact)}

    def retrain_router(self, trained: dict[str, Any], evaluation: dict[str, Any]) -> Path | None:
        """A learned start policy is retrained on the new student's answers; 'cheapest' needs nothing."""
        if self.config.cascade.start_policy != "router":
            return None
        from routenlp_ray.routing.training import train_router_policy

        published = self.settings.publish_student
        config = self.variant_config(trained[published]["artifact_dir"])
        policy, report = train_router_policy(
            config, self.records_dir(published), self.data_dir, evaluation["tasks"],
            split=self.settings.eval_split, seed=self.settings.seed, version=f"router-{self.run_id}",
        )
        return policy.save(self.run_dir / "router", metadata=report)

    # -- the whole iteration --------------------------------------------------------------------
    def run(self, publish: bool = True) -> IterationResult:
        mined = self.mine()
        sets = self.training_sets(mined)
        trained = self.train(sets)
        trained["base"] = {"artifact_dir": None}
        evaluation = self.evaluate(trained)
        passed, reasons = self.gate(evaluation)
        published = None
        router_path = None
        artifact = trained[self.settings.publish_student]["artifact_dir"]
        held_back: dict[str, list[str]] = {}
        published_tasks: list[str] | None = None
        if not passed and self.settings.gate_scope == "task" and self.is_specialist:
            refitted = sorted(trained[self.settings.publish_student].get("refitted_tasks") or {})
            verdicts = self.task_gate(evaluation, refitted)
            published_tasks = [t for t, why in verdicts.items() if not why]
            held_back = {t: why for t, why in verdicts.items() if why}
            if published_tasks:
                passed = True
                artifact = str(self.partial_artifact(artifact, published_tasks))
        recalibration_only = False
        if not passed and self.settings.gate_scope == "task" and self.is_specialist and self.current_artifact:
            # No new head passed, but the heads served are recalibrated on the newest labelled rows.
            thresholds = self.recalibrate(None, evaluation, [])
            if ThresholdTable.load(thresholds).thresholds != self.current_thresholds().thresholds:
                recalibration_only, artifact, published_tasks = True, str(self.current_artifact), []
        if passed or recalibration_only:
            thresholds = self.recalibrate(None if recalibration_only else trained, evaluation, published_tasks)
            # A learned router is retrained on the whole student's answers: only a whole release gets one.
            router_path = self.retrain_router(trained, evaluation) if published_tasks is None else None
            if publish and self.config.releases.path:
                store = ReleaseStore(self.config.releases.path)
                version = f"loop-{self.run_id}"
                if version in store.versions():
                    published = version  # an earlier attempt of this run published already
                else:
                    published = store.publish(
                        version,
                        adapters=self.release_artifacts(artifact),
                        thresholds=thresholds,
                        router=router_path,
                        report=_summary(evaluation, self.variants),
                    ).version
        report = build_report(self, mined, sets, trained, evaluation, passed, reasons, published, router_path)
        report["gate"].update({"scope": self.settings.gate_scope, "published_tasks": published_tasks,
                               "held_back": held_back, "recalibration_only": recalibration_only})
        path = self.run_dir / "report.json"
        path.write_text(json.dumps(report, indent=2, default=_jsonable))
        (self.run_dir / "report.md").write_text(report_markdown(report))
        return IterationResult(self.run_id, published, passed, reasons, str(path), report)


# -- evaluation -----------------------------------------------------------------------------------
@dataclass
class HeldOutRows:
    """One task's held-out rows under a student's cascade, row by row, each read with a threshold not fitted on it."""

    task: str
    ids: list[str]
    answered: np.ndarray  # tier index per row: 0 the student, 1 the frontier
    paid: np.ndarray
    quality: np.ndarray
    frontier_cost: np.ndarray
    frontier_quality: np.ndarray
    threshold: float | None  # fitted on the first half (it serves the second)
    cheap_accuracy: float
    thresholds: tuple[float | None, ...] = ()  # one per fold


def held_out_rows(tables: list[TaskTable], threshold_for: Callable[[TaskTable], float | None]
                  ) -> list[HeldOutRows]:
    """Cross-fitted over two halves of each task's held-out rows: calibrate on one half, run the cascade on
    the other, then the other way round. Every row is read once, with a threshold not fitted on it, so
    a gate judges on all the rows instead of half of them (the same estimate, half the variance)."""
    out = []
    for table in tables:
        half = np.array([in_held_out_half(i) for i in table.ids], dtype=bool)
        ids: list[str] = []
        parts: list[tuple[np.ndarray, ...]] = []
        thresholds: list[float | None] = []
        for test_mask in (half, ~half):
            calib, test = table.rows(~test_mask), table.rows(test_mask)
            threshold = threshold_for(calib) if len(calib.ids) else None
            thresholds.append(None if threshold is None else float(threshold))
            if not len(test.ids):
                continue
            answered, paid, got = cascade_outcome(test, [threshold, None])
            ids += list(test.ids)
            parts.append((answered, paid, got, test.cost[:, -1], test.quality[:, -1]))
        stacked = [np.concatenate(column) if parts else np.zeros(0) for column in zip(*parts)] or [np.zeros(0)] * 5
        out.append(HeldOutRows(
            task=table.task, ids=ids, answered=stacked[0], paid=stacked[1], quality=stacked[2],
            frontier_cost=stacked[3], frontier_quality=stacked[4], threshold=thresholds[0],
            cheap_accuracy=float(table.correct[:, 0].mean()) if len(table.ids) else 0.0,
            thresholds=tuple(thresholds),
        ))
    return out


def _cascade_metrics(tables: list[TaskTable], threshold_for: Callable[[TaskTable], float | None]) -> VariantMetrics:
    per_task: dict[str, dict[str, float]] = {}
    cost = base_cost = quality = base_quality = right = rows = 0.0
    for table, held in zip(tables, held_out_rows(tables, threshold_for)):
        frontier_cost, frontier_quality = held.frontier_cost.sum(), held.frontier_quality.sum()
        per_task[table.task] = {
            "n_test": float(len(held.ids)),
            "threshold": float("nan") if held.threshold is None else held.threshold,
            "cheap_accuracy": held.cheap_accuracy,
            "cheap_answer_rate": float((held.answered == 0).mean()) if len(held.ids) else 0.0,
            "cost_reduction": float(1 - held.paid.sum() / frontier_cost) if frontier_cost else 0.0,
            "quality_retention": float(held.quality.sum() / frontier_quality) if frontier_quality else 1.0,
        }
        cost += held.paid.sum()
        base_cost += frontier_cost
        quality += held.quality.sum()
        base_quality += frontier_quality
        right += table.correct[:, 0].sum()
        rows += len(table.ids)
    return VariantMetrics(
        per_task=per_task,
        cost_reduction=float(1 - cost / base_cost) if base_cost else 0.0,
        quality_retention=float(quality / base_quality) if base_quality else 1.0,
        cheap_accuracy=float(right / rows) if rows else 0.0,
    )


def _summary(evaluation: dict[str, Any], variants: Sequence[str] = VARIANTS) -> dict[str, Any]:
    return {v: {k: evaluation[v][k] for k in ("cost_reduction", "quality_retention", "cheap_accuracy")}
            for v in variants}


def _head_tasks(artifact: str | Path | None) -> list[str]:
    """The tasks a specialist artifact has heads for."""
    from routenlp_ray.specialists.artifact import read_manifest

    return sorted(read_manifest(artifact).tasks) if artifact is not None else []


def build_report(
    iteration: Iteration,
    mined: dict[str, Any],
    sets: dict[str, Any],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    passed: bool,
    reasons: list[str],
    published: str | None,
    router_path: Path | None,
) -> dict[str, Any]:
    students = iteration.settings.students
    base = evaluation["base"]["cost_reduction"]
    gain = {v: evaluation[v]["cost_reduction"] - base for v in students}
    ratio = (gain["targeted"] / gain["untargeted"]
             if {"targeted", "untargeted"} <= set(students) and gain["untargeted"] > 0 else None)
    return {
        "run_id": iteration.run_id,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "student_tier": iteration.student.name,
        "starts_from": iteration.starts_from,
        "mining": {
            "queries": mined["n_queries"],
            "failures": mined["n_failures"],
            "clusters": len(mined["clusters"]),
            "top_clusters": [c for c in mined["clusters"] if c["cluster"] in mined["top_clusters"]],
            "teacher_examples": len(mined["teacher"]),
            "teacher_skipped": mined["teacher_skipped"],
        },
        "budget": {
            "examples_per_student": sets["budget"],
            "untargeted_examples": len(sets["untargeted"]),
            "rehearsed_per_student": sets.get("rehearsed", 0),
            "targeted_tasks": dict(Counter(e["task"] for e in sets["targeted"]).most_common()),
            "untargeted_tasks": dict(Counter(e["task"] for e in sets["untargeted"]).most_common()),
            "distill": iteration.settings.distill.model_dump(mode="json"),
        },
        "evaluation_artifacts": {"base": iteration.current_artifact,
                                 **{v: trained[v]["artifact_dir"] for v in students}},
        "students": list(students),
        "published_student": iteration.settings.publish_student,
        "training": {v: _training_summary(trained[v]) for v in students},
        "evaluation": evaluation,
        "cost_improvement": {**gain, "targeted_over_untargeted": ratio},
        "gate": {"passed": passed, "reasons": reasons},
        "published": published,
        "router_retrained": str(router_path) if router_path else None,
    }


def report_markdown(report: dict[str, Any]) -> str:
    ev = report["evaluation"]
    students = report.get("students", ["targeted", "untargeted"])
    variants = ["base", *students]
    published = report.get("published_student", "targeted")
    training = report["training"][published]
    spent = (f"{report['budget']['distill']['max_steps']} LoRA steps each" if "steps" in training else
             "heads refitted with their base C: " + ", ".join(
                 f"{t} {r['base_pairs']} + {r['new_pairs']}" for t, r in training["refitted_tasks"].items()))
    lines = [
        f"# Loop iteration {report['run_id']}",
        "",
        f"Student tier `{report['student_tier']}`; {report['mining']['queries']} logged queries, "
        f"{report['mining']['failures']} cheap-tier failures in {report['mining']['clusters']} clusters; "
        f"{report['budget']['examples_per_student']} training examples per student, {spent} ({published}).",
        "",
        "| student | cost reduction | quality retention | cheap-tier accuracy |",
        "|---|---|---|---|",
    ]
    for variant in variants:
        m = ev[variant]
        lines.append(f"| {variant} | {m['cost_reduction']:.1%} | {m['quality_retention']:.1%} | {m['cheap_accuracy']:.1%} |")
    gain = report["cost_improvement"]
    ratio = gain["targeted_over_untargeted"]
    improvement = ", ".join(f"{s} {gain[s]:+.1%}" for s in students)
    if len(students) == 2:
        improvement += f"; ratio {'n/a (untargeted gained nothing)' if ratio is None else f'{ratio:.2f}x'}"
    lines += [
        "",
        f"Cost improvement over the current model: {improvement}.",
        "",
        "| task | " + " | ".join(f"{v} retention / cost red." for v in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for task in ev["tasks"]:
        cells = [f"{ev[v]['per_task'][task]['quality_retention']:.1%} / {ev[v]['per_task'][task]['cost_reduction']:.1%}"
                 for v in variants]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    gate = report["gate"]
    lines += ["", f"Gate: {'passed' if gate['passed'] else 'failed'}" + "".join(f"\n- {r}" for r in gate["reasons"]),
              f"Published: {report['published'] or 'nothing'}"]
    return "\n".join(lines) + "\n"


# -- helpers --------------------------------------------------------------------------------------
def frontier_caller(config: RouteNLPConfig, engine: Any = None) -> Callable[[str, str], Awaitable[str | None]] | None:
    """Ask the frontier in process where it can run here (replay, OpenAI-compatible); else None.

    ``engine``: the frontier's engine when the caller has it up already (a benchmark), else one is made.
    """
    if engine is None and config.frontier.engine.type == "vllm":
        return None
    from routenlp_ray.engines.base import GenerationRequest
    from routenlp_ray.engines.factory import make_engine

    engine = engine or make_engine(config.frontier)

    async def call(task: str, text: str) -> str | None:
        request = GenerationRequest(
            request_id="loop-teacher",
            messages=config.task(task).apply_to_messages([{"role": "user", "content": text}]),
            task=task, raw_input=text, max_tokens=config.frontier.limits.default_max_tokens,
        )
        try:
            return (await engine.generate(request)).text
        except Exception as exc:
            logger.warning("frontier could not answer a teacher query: %s", exc)
            return None

    return call


def _training_summary(trained: dict[str, Any]) -> dict[str, Any]:
    if "losses" in trained:  # a LoRA run
        return {k: trained[k] for k in ("steps", "train_seconds", "wall_seconds", "n_examples")} | {
            "first_loss": trained["losses"][0], "last_loss": trained["losses"][-1]}
    return {k: trained[k] for k in ("n_examples", "refitted_tasks", "task_Cs", "wall_seconds", "new_tasks")
            if k in trained}


def _artifact_fingerprint(artifact: str | None) -> str | None:
    """The artifact by content: a folder retrained in place is a different model.

    A specialist artifact's manifest checksums every file; a LoRA adapter is hashed by its weights.
    """
    if artifact is None:
        return None
    folder = Path(artifact)
    files = ([folder / "manifest.json"] if (folder / "manifest.json").is_file() else
             sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return f"{folder.resolve()}:{digest.hexdigest()[:16]}"


def _has_split(data_dir: Path, task: Any, split: str) -> bool:
    try:
        return task.data_file(data_dir, split).exists()
    except ConfigError:  # no such folder or split
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
