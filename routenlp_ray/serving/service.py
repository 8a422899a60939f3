"""The router's request logic, free of Ray and HTTP so it can be tested directly.

The Serve ingress (``deployments/router.py``) parses HTTP and calls into this class; the
tiers arrive as plain async callables (deployment handles on Ray, engines in tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import Field

from routenlp_ray._exceptions import (
    AllTiersFailedError,
    AuthenticationError,
    PayloadTooLargeError,
    RequestError,
    UnknownTaskError,
)
from routenlp_ray.cascade import SKIP_NO_THRESHOLD, CascadeOutcome, CascadeTier, TierCall, run_cascade
from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.config.cascade import CascadeConfig
from routenlp_ray.config.tasks import TaskConfig
from routenlp_ray.conformal.scores import AnswerEvidence
from routenlp_ray.conformal.selection import TaskScores
from routenlp_ray.conformal.thresholds import ThresholdTable, load_thresholds
from routenlp_ray.costs import frontier_cost
from routenlp_ray.engines.base import GenerationRequest
from routenlp_ray.monitoring.audits import Audit, AuditedAnswer, AuditSampler, audit_from_outcome

if TYPE_CHECKING:
    from routenlp_ray.releases import Release
from routenlp_ray.routing.policy import StartTierPolicy, load_policy
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from routenlp_ray.telemetry.metrics import NullRouterMetrics, RouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.router")

MODEL_PREFIX = "routenlp"
RECENT_RESPONSES = 50_000


class RouterUserConfig(StrictModel):
    """What ``reconfigure()`` accepts: artifacts that change without a restart."""

    thresholds_path: str | None = Field(None, description="Threshold artifact to load.")
    thresholds: dict[str, dict[str, float]] | None = Field(None, description="Inline thresholds; override the artifact.")
    default_threshold: float | None = Field(None, description="Threshold for (tier, task) pairs with none.")
    start_policy: str | None = Field(None, description="'cheapest' or '<module>:<factory>'.")
    uncertainty: str | None = Field(None, description="Default uncertainty score; swap it with matching thresholds.")
    uncertainty_per_task: dict[str, str] | None = Field(None, description="Per-task uncertainty scores.")
    answer_scorer_path: str | None = Field(None, description="Learned answer scorer artifact.")
    router_path: str | None = Field(None, description="Router artifact for the 'router' start policy.")


def policy_for(cascade: CascadeConfig) -> StartTierPolicy:
    return load_policy(cascade.start_policy, cascade.router_path)


class RouterService:
    """Resolves the task, runs the cascade, logs the decision and answers in OpenAI format."""

    def __init__(
        self,
        config: RouteNLPConfig,
        tiers: Mapping[str, TierCall],
        query_log: QueryLog | None = None,
        metrics: RouterMetrics | None = None,
        monitor_sink: Callable[[dict[str, Any]], Awaitable[Any]] | None = None,
    ) -> None:
        missing = [t.name for t in config.tiers if t.name not in tiers]
        if missing:
            raise ValueError(f"no callable was given for tiers {missing}")
        self.config = config
        self.query_log = query_log
        self.metrics = metrics or NullRouterMetrics()
        self._tiers = [
            CascadeTier(
                name=t.name,
                call=tiers[t.name],
                pricing=t.pricing,
                timeout_s=t.timeout_s,
                tasks=frozenset(t.tasks) if t.tasks is not None else None,
            )
            for t in config.tiers
        ]
        self._tier_names = [t.name for t in config.tiers]
        self._tasks = {t.name: t for t in config.tasks}
        self._api_keys = config.server.resolved_api_keys()
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.cascade_config = config.cascade
        self.thresholds = load_thresholds(config.cascade)
        self.policy = policy_for(config.cascade)
        self.scores = TaskScores(config.cascade)
        # Audits and feedback labels go to the coverage monitor (a deployment handle on Ray).
        self.monitor_sink = monitor_sink if config.monitoring.enabled else None
        self._sampler = AuditSampler(config.monitoring.audit_rate, seed=config.monitoring.seed)
        self._background: set[asyncio.Task[Any]] = set()
        self.release_version: str | None = None

    # -- hot reload -----------------------------------------------------------------------
    def reconfigure(self, user_config: Mapping[str, Any] | None) -> dict[str, str]:
        """Swap thresholds and policy in place. Invalid input raises and keeps the old versions."""
        update = RouterUserConfig.model_validate(dict(user_config or {}))
        changes = update.model_dump(exclude_none=True)
        cascade = self.config.cascade.model_copy(update=changes)
        cascade = CascadeConfig.model_validate(cascade.model_dump())  # re-run validation on the merged result
        thresholds = load_thresholds(cascade)
        policy = policy_for(cascade)
        scores = TaskScores(cascade) if cascade != self.cascade_config else self.scores
        before = {"thresholds_version": self.thresholds.version, "policy_version": self.policy.version}
        self.cascade_config, self.thresholds, self.policy, self.scores = cascade, thresholds, policy, scores
        after = {"thresholds_version": thresholds.version, "policy_version": policy.version}
        logger.info("router reconfigured: %s -> %s", before, after)
        self._log_event_nowait({"event": "reconfigure", "before": before, "after": after, "changes": changes})
        return after

    def apply_thresholds(self, table: ThresholdTable, reason: str) -> bool:
        """Swap in thresholds decided elsewhere (the coverage monitor); logs every changed value."""
        before = self.thresholds
        if table.version == before.version:
            return False
        changes = [
            {"tier": tier, "task": task, "before": before.get(tier, task), "after": delta}
            for tier, per_task in table.thresholds.items()
            for task, delta in per_task.items()
            if not before.has(tier, task) or before.get(tier, task) != delta
        ]
        self.thresholds = table
        logger.info("thresholds %s -> %s (%s): %s", before.version, table.version, reason, changes)
        self._log_event_nowait({
            "event": "thresholds_applied",
            "reason": reason,
            "before": {"thresholds_version": before.version},
            "after": {"thresholds_version": table.version},
            "changes": changes,
        })
        return True

    def apply_release(self, release: "Release") -> None:
        """Take a loop release's thresholds and router; its adapters are the tier replicas' business."""
        before = {"release": self.release_version, "policy_version": self.policy.version}
        if release.thresholds_path is not None:
            self.apply_thresholds(ThresholdTable.load(release.thresholds_path), reason=f"release {release.version}")
        if release.router_path is not None:
            self.policy = load_policy("router", str(release.router_path))
        self.release_version = release.version
        after = {"release": release.version, "policy_version": self.policy.version}
        self._log_event_nowait({"event": "release_applied", "before": before, "after": after})

    # -- request checks -------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> None:
        if not self._api_keys:
            return
        if not authorization:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self._api_keys:
            raise AuthenticationError("invalid API key")

    def resolve_task(self, model: str, task: str | None = None) -> TaskConfig:
        """``task`` wins; else ``model`` names it as ``routenlp/<task>`` or ``<task>``."""
        name = task
        if name is None:
            prefix, _, rest = model.partition("/")
            if prefix == MODEL_PREFIX and rest:
                name = rest
            elif model in (MODEL_PREFIX, f"{MODEL_PREFIX}/auto"):
                name = self.config.server.default_task
            else:
                name = model
        if name is None or name not in self._tasks:
            known = ", ".join(f"{MODEL_PREFIX}/{t}" for t in self._tasks)
            shown = name if name is not None else model
            raise UnknownTaskError(f"unknown task {shown!r}; known models: {known}", param="model")
        return self._tasks[name]

    def _check_input_size(self, text_length: int) -> None:
        limit = self.config.server.max_input_chars
        if text_length > limit:
            raise PayloadTooLargeError(f"input is {text_length} characters; the limit is {limit}", param="messages")

    def _max_tokens(self, requested: int | None) -> int:
        # The smallest cap across tiers keeps one request valid for every tier it may reach.
        cap = min(t.limits.max_tokens for t in self.config.tiers)
        default = min(t.limits.default_max_tokens for t in self.config.tiers)
        return min(requested or default, cap)

    # -- endpoints --------------------------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest) -> dict[str, Any]:
        task = self.resolve_task(body.model, body.task)
        self._check_input_size(sum(len(m.text) for m in body.messages))
        raw_input = next(m.text for m in reversed(body.messages) if m.role == "user")
        messages = task.apply_to_messages([{"role": m.role, "content": m.text} for m in body.messages])
        request = self._generation_request(f"chatcmpl-{uuid.uuid4().hex}", body, task, raw_input, messages=messages)
        outcome, routing = await self._route(request, task, raw_input, "chat.completions")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": outcome.answer.text},
            "finish_reason": outcome.answer.finish_reason,
            "logprobs": None,
        }
        return _envelope(request.request_id, "chat.completion", task, choice, outcome, routing)

    async def complete(self, body: CompletionRequest) -> dict[str, Any]:
        task = self.resolve_task(body.model, body.task)
        raw_input = body.prompt_text
        self._check_input_size(len(raw_input))
        prompt = task.render_user_message(raw_input)
        if task.system_prompt:
            prompt = f"{task.system_prompt}\n\n{prompt}"
        request = self._generation_request(f"cmpl-{uuid.uuid4().hex}", body, task, raw_input, prompt=prompt)
        outcome, routing = await self._route(request, task, raw_input, "completions")
        choice = {"index": 0, "text": outcome.answer.text, "finish_reason": outcome.answer.finish_reason, "logprobs": None}
        return _envelope(request.request_id, "text_completion", task, choice, outcome, routing)

    def _generation_request(
        self,
        request_id: str,
        body: ChatCompletionRequest | CompletionRequest,
        task: TaskConfig,
        raw_input: str,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
    ) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            messages=messages,
            prompt=prompt,
            max_tokens=self._max_tokens(body.requested_max_tokens),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_sequences,
            task=task.name,
            raw_input=raw_input,
        )

    async def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        known = self._recent.get(body.response_id)
        record = {
            "id": f"fb-{uuid.uuid4().hex}",
            "ts": _now(),
            "response_id": body.response_id,
            "accepted": body.accepted,
            "score": body.score,
            "comment": body.comment,
            "source": body.source,
            "matched": known is not None,
            "task": known["task"] if known else None,
            "answered_by": known["answered_by"] if known else None,
        }
        if self.query_log is not None:
            await self.query_log.append("feedback", record)
        label = _feedback_label(body.accepted, body.score)
        if known is not None and label is not None and known["answered_by"] != self._tier_names[-1]:
            self._send_to_monitor({
                "kind": "feedback", "tier": known["answered_by"], "task": known["task"],
                "uncertainty": known["uncertainty"], "correct": label, "query_id": body.response_id, "ts": time.time(),
            })
        return {"object": "feedback", "id": record["id"], "response_id": body.response_id, "recorded": True}

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        data = [
            {
                "id": f"{MODEL_PREFIX}/{task.name}",
                "object": "model",
                "created": created,
                "owned_by": MODEL_PREFIX,
                "description": task.description,
                "metric": task.metric,
                "quality_target": task.quality_target,
            }
            for task in self.config.tasks
        ]
        return {"object": "list", "data": data}

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "tiers": self._tier_names,
            "tasks": list(self._tasks),
            "thresholds_version": self.thresholds.version,
            "policy_version": self.policy.version,
            "release": self.release_version,
        }

    async def log_rejection(self, endpoint: str, error: RequestError) -> None:
        """A refused request is logged too: a spike of 4xx is something operators look for."""
        self.metrics.record_rejection(error.error_type)
        record = {
            "id": f"rej-{uuid.uuid4().hex}",
            "ts": _now(),
            "kind": "rejected",
            "endpoint": endpoint,
            "http_status": error.status_code,
            "error_type": error.error_type,
            "error": error.message,
        }
        if self.query_log is not None:
            await self.query_log.append("events", record)

    # -- internals --------------------------------------------------------------------------
    def _threshold_for(self, task: str) -> Callable[[str], float | None]:
        table, default = self.thresholds, self.cascade_config.default_threshold

        def threshold(tier: str) -> float | None:
            return table.resolve(tier, task, default)

        return threshold

    async def _route(
        self, request: GenerationRequest, task: TaskConfig, raw_input: str, endpoint: str
    ) -> tuple[CascadeOutcome, dict[str, Any]]:
        started = time.perf_counter()
        # Snapshot the versions so one request is decided under one consistent set.
        policy, thresholds, scores = self.policy, self.thresholds, self.scores
        start_tier = policy.start_tier(task.name, raw_input, self._tier_names)
        if start_tier not in self._tier_names:
            logger.warning("policy %s picked unknown tier %r; starting at the cheapest", policy.version, start_tier)
            start_tier = self._tier_names[0]
        score = scores.for_task(task.name)
        try:
            outcome = await run_cascade(
                request,
                self._tiers,
                start=self._tier_names.index(start_tier),
                threshold_for=self._threshold_for(task.name),
                uncertainty_of=lambda result: score(AnswerEvidence.from_result(result, task.name, raw_input)),
            )
        except AllTiersFailedError as exc:
            self.metrics.record_failure(task.name, "all_tiers_failed")
            await self._log_query(
                request, task, endpoint, raw_input, start_tier, None, None, _ms_since(started),
                thresholds.version, policy.version, error=str(exc),
            )
            raise
        latency_ms = _ms_since(started)
        routing = self._routing_object(task, start_tier, outcome, thresholds.version, policy.version)
        self.metrics.record_outcome(task.name, outcome, latency_ms, routing["saved_usd"])
        await self._log_query(
            request, task, endpoint, raw_input, start_tier, outcome, routing, latency_ms,
            thresholds.version, policy.version,
        )
        self._remember(request.request_id, task.name, outcome)
        # A task with no metric cannot be labelled: auditing it would only pay for frontier calls.
        if self.monitor_sink is not None and task.metric != "none" and self._sampler.sample():
            self._audit(request, task.name, outcome, score, raw_input)
        return outcome, routing

    def _routing_object(
        self, task: TaskConfig, start_tier: str, outcome: CascadeOutcome, thresholds_version: str, policy_version: str
    ) -> dict[str, Any]:
        frontier = self.config.frontier
        frontier_attempt = next(
            (a for a in outcome.attempts if a.tier == frontier.name and a.status in ("accepted", "escalated")), None
        )
        if frontier_attempt is not None:
            baseline = frontier_attempt.cost_usd
        else:
            baseline = frontier_cost(frontier.pricing, outcome.answer.prompt_tokens, outcome.answer.completion_tokens)
        total = outcome.cost_usd
        return {
            "task": task.name,
            "start_tier": start_tier,
            "answered_by": outcome.answered_by,
            "fallback": outcome.fallback,
            "escalations": outcome.escalations,
            "attempts": [a.to_dict() for a in outcome.attempts],
            "cost_usd": total,
            "frontier_cost_usd": baseline,
            "saved_usd": baseline - total,
            "thresholds_version": thresholds_version,
            "policy_version": policy_version,
        }

    async def _log_query(
        self,
        request: GenerationRequest,
        task: TaskConfig,
        endpoint: str,
        raw_input: str,
        start_tier: str,
        outcome: CascadeOutcome | None,
        routing: dict[str, Any] | None,
        latency_ms: float,
        thresholds_version: str,
        policy_version: str,
        error: str | None = None,
    ) -> None:
        if self.query_log is None:
            return
        answer = outcome.answer if outcome else None
        record = {
            "id": request.request_id,
            "ts": _now(),
            "endpoint": endpoint,
            "task": task.name,
            "status": "ok" if outcome else "failed",
            "input": raw_input,
            "request": {
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "top_p": request.top_p,
                "stop": list(request.stop),
            },
            "start_tier": start_tier,
            "answered_by": outcome.answered_by if outcome else None,
            "fallback": outcome.fallback if outcome else False,
            "attempts": routing["attempts"] if routing else [],
            "answer": answer.text if answer else None,
            "token_logprobs": answer.token_logprobs if answer else None,
            "prompt_tokens": answer.prompt_tokens if answer else 0,
            "completion_tokens": answer.completion_tokens if answer else 0,
            "cost_usd": float(routing["cost_usd"]) if routing else 0.0,
            "frontier_cost_usd": float(routing["frontier_cost_usd"]) if routing else 0.0,
            "saved_usd": float(routing["saved_usd"]) if routing else 0.0,
            "latency_ms": latency_ms,
            "thresholds_version": thresholds_version,
            "policy_version": policy_version,
            "error": error,
        }
        await self.query_log.append("queries", record)

    def _log_event_nowait(self, record: dict[str, Any]) -> None:
        if self.query_log is not None:
            self.query_log.append_sync("events", {"id": f"evt-{uuid.uuid4().hex}", "ts": _now(), **record})

    # -- audits -----------------------------------------------------------------------------
    def _audit(
        self, request: GenerationRequest, task: str, outcome: CascadeOutcome, score: Any, raw_input: str
    ) -> None:
        last = self._tiers[-1]
        audit = audit_from_outcome(request.request_id, task, outcome, last.name)
        # A tier skipped for want of a threshold is asked on audited queries only, off the response
        # path: without those labels the monitor could never calibrate it into use.
        unlabelled = [
            tier for tier in self._tiers[:-1]
            if any(a.tier == tier.name and a.reason == SKIP_NO_THRESHOLD for a in outcome.attempts)
        ]
        if audit is None and not unlabelled:
            return
        if audit is None:
            audit = Audit(query_id=request.request_id, task=task, answers=[])
            if outcome.answered_by == last.name and not outcome.fallback:
                audit.reference, audit.reference_tier = outcome.answer.text, last.name
        if audit.reference is not None and not unlabelled:
            self._send_to_monitor({"kind": "audit", **audit.to_dict()})
        else:
            self._spawn(self._shadow_audit(request, audit, unlabelled, score, raw_input))

    async def _shadow_audit(
        self, request: GenerationRequest, audit: Audit, unlabelled: list[CascadeTier], score: Any, raw_input: str
    ) -> None:
        for tier in unlabelled:
            try:
                answer = await asyncio.wait_for(tier.call(request), timeout=tier.timeout_s)
            except Exception as exc:  # an audit must never hurt serving
                logger.warning("audit of %s: tier %r did not answer: %s", audit.query_id, tier.name, exc)
                continue
            uncertainty = score(AnswerEvidence.from_result(answer, audit.task, raw_input))
            audit.answers.append(AuditedAnswer(tier.name, answer.text, uncertainty))
        if not audit.answers:
            return
        if audit.reference is None:
            last = self._tiers[-1]
            try:
                reference = await asyncio.wait_for(last.call(request), timeout=last.timeout_s)
            except Exception as exc:
                logger.warning("audit of %s: tier %r did not answer: %s", audit.query_id, last.name, exc)
                return
            audit.reference, audit.reference_tier = reference.text, last.name
        await self._deliver({"kind": "audit", **audit.to_dict()})

    def _send_to_monitor(self, payload: dict[str, Any]) -> None:
        self._spawn(self._deliver(payload))

    async def _deliver(self, payload: dict[str, Any]) -> None:
        if self.monitor_sink is None:
            return
        try:
            await self.monitor_sink(payload)
        except Exception as exc:
            logger.warning("could not send a %s label to the coverage monitor: %s", payload.get("kind"), exc)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for pending audits (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _remember(self, response_id: str, task: str, outcome: CascadeOutcome) -> None:
        attempt = next((a for a in outcome.attempts if a.tier == outcome.answered_by), None)
        self._recent[response_id] = {
            "task": task,
            "answered_by": outcome.answered_by,
            "uncertainty": attempt.uncertainty if attempt else None,
        }
        while len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)


def _envelope(
    response_id: str, obj: str, task: TaskConfig, choice: dict[str, Any], outcome: CascadeOutcome, routing: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAI response body, with the cascade's ``routing`` object attached."""
    answer = outcome.answer
    return {
        "id": response_id,
        "object": obj,
        "created": int(time.time()),
        "model": f"{MODEL_PREFIX}/{task.name}",
        "choices": [choice],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
        "routing": routing,
    }


def _feedback_label(accepted: bool | None, score: float | None) -> bool | None:
    """Feedback as a label: ``accepted`` if given, else a score of at least 0.5 out of 1."""
    if accepted is not None:
        return accepted
    return None if score is None else score >= 0.5


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
