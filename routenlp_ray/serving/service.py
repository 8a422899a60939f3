"""The router's request path, free of Ray and HTTP so it can be tested directly.

The Serve ingress (``deployments/router.py``) parses HTTP and calls into this class; the
tiers arrive as plain async callables (deployment handles on Ray, engines in tests). What
changes without a restart (thresholds, start policy, scores, release) lives in
``LiveArtifacts``; a request takes one snapshot of it and is decided under that alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from routenlp_ray._exceptions import AllTiersFailedError, RequestError, UnknownTaskError
from routenlp_ray.cascade import CascadeOutcome, CascadeTier, TierCall, run_cascade
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.config.tasks import TaskConfig
from routenlp_ray.conformal.scores import AnswerEvidence
from routenlp_ray.engines.base import GenerationRequest
from routenlp_ray.monitoring.audits import AuditSampler
from routenlp_ray.serving.feed import MonitorFeed, MonitorSink
from routenlp_ray.serving.http import RequestGate
from routenlp_ray.serving.live import LiveArtifacts
from routenlp_ray.serving.responses import MODEL_PREFIX, envelope, feedback_label, now_iso, query_record, routing_object
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from routenlp_ray.telemetry.metrics import NullRouterMetrics, RouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog, find_record

logger = logging.getLogger("routenlp.router")

RECENT_RESPONSES = 50_000


class RouterService:
    """Resolves the task, runs the cascade, logs the decision and answers in OpenAI format.

    ``live`` defaults to artifacts loaded from ``config``; the ingress passes its own, which it
    also reconfigures and polls.
    """

    def __init__(
        self,
        config: RouteNLPConfig,
        tiers: Mapping[str, TierCall],
        query_log: QueryLog | None = None,
        metrics: RouterMetrics | None = None,
        monitor_sink: MonitorSink | None = None,
        live: LiveArtifacts | None = None,
    ) -> None:
        missing = [t.name for t in config.tiers if t.name not in tiers]
        if missing:
            raise ValueError(f"no callable was given for tiers {missing}")
        self.config = config
        self.query_log = query_log
        self.metrics = metrics or NullRouterMetrics()
        self.live = live or LiveArtifacts(config, query_log=query_log)
        self.gate = RequestGate(config.server)
        self._tiers = [
            CascadeTier(name=t.name, call=tiers[t.name], pricing=t.pricing, timeout_s=t.timeout_s,
                        tasks=frozenset(t.tasks) if t.tasks is not None else None)
            for t in config.tiers
        ]
        self._tier_names = [t.name for t in config.tiers]
        self._tasks = {t.name: t for t in config.tasks}
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Audits and feedback labels go to the coverage monitor (a deployment handle on Ray).
        sampler = AuditSampler(config.monitoring.audit_rate, seed=config.monitoring.seed)
        self.feed = MonitorFeed(monitor_sink if config.monitoring.enabled else None, self._tiers, sampler)

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

    # -- endpoints --------------------------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest) -> dict[str, Any]:
        task = self.resolve_task(body.model, body.task)
        self.gate.check_input_chars(sum(len(m.text) for m in body.messages))
        raw_input = next(m.text for m in reversed(body.messages) if m.role == "user")
        messages = task.apply_to_messages([{"role": m.role, "content": m.text} for m in body.messages])
        request = self._generation_request(f"chatcmpl-{uuid.uuid4().hex}", body, task, raw_input, messages=messages)
        outcome, routing = await self._route(request, task, raw_input, "chat.completions")
        answer = outcome.answer
        choice = {"index": 0, "message": {"role": "assistant", "content": answer.text},
                  "finish_reason": answer.finish_reason, "logprobs": None}
        return envelope(request.request_id, "chat.completion", task, choice, outcome, routing)

    async def complete(self, body: CompletionRequest) -> dict[str, Any]:
        task = self.resolve_task(body.model, body.task)
        raw_input = body.prompt_text
        self.gate.check_input_chars(len(raw_input))
        prompt = task.render_user_message(raw_input)
        if task.system_prompt:
            prompt = f"{task.system_prompt}\n\n{prompt}"
        request = self._generation_request(f"cmpl-{uuid.uuid4().hex}", body, task, raw_input, prompt=prompt)
        outcome, routing = await self._route(request, task, raw_input, "completions")
        answer = outcome.answer
        choice = {"index": 0, "text": answer.text, "finish_reason": answer.finish_reason, "logprobs": None}
        return envelope(request.request_id, "text_completion", task, choice, outcome, routing)

    async def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        known = await self._recall(body.response_id)
        record = {
            "id": f"fb-{uuid.uuid4().hex}",
            "ts": now_iso(),
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
        label = feedback_label(body.accepted, body.score)
        if known is not None and label is not None and known["answered_by"] != self._tier_names[-1]:
            self.feed.send({
                "kind": "feedback", "tier": known["answered_by"], "task": known["task"],
                "uncertainty": known["uncertainty"], "correct": label, "query_id": body.response_id, "ts": time.time(),
            })
        return {"object": "feedback", "id": record["id"], "response_id": body.response_id, "recorded": True}

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        data = [
            {"id": f"{MODEL_PREFIX}/{task.name}", "object": "model", "created": created, "owned_by": MODEL_PREFIX,
             "description": task.description, "metric": task.metric, "quality_target": task.quality_target}
            for task in self.config.tasks
        ]
        return {"object": "list", "data": data}

    def health(self) -> dict[str, Any]:
        live = self.live.snapshot()
        return {
            "status": "ok",
            "tiers": self._tier_names,
            "tasks": list(self._tasks),
            "thresholds_version": live.thresholds_version,
            "policy_version": live.policy_version,
            "release": live.release,
        }

    async def log_rejection(self, endpoint: str, error: RequestError) -> None:
        """A refused request is logged too: a spike of 4xx is something operators look for."""
        self.metrics.record_rejection(error.error_type)
        record = {
            "id": f"rej-{uuid.uuid4().hex}", "ts": now_iso(), "kind": "rejected", "endpoint": endpoint,
            "http_status": error.status_code, "error_type": error.error_type, "error": error.message,
        }
        if self.query_log is not None:
            await self.query_log.append("events", record)

    async def drain(self) -> None:
        """Wait for pending audits (tests, shutdown)."""
        await self.feed.drain()

    # -- the request path -------------------------------------------------------------------
    def _generation_request(
        self,
        request_id: str,
        body: ChatCompletionRequest | CompletionRequest,
        task: TaskConfig,
        raw_input: str,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
    ) -> GenerationRequest:
        # The smallest cap across tiers keeps one request valid for every tier it may reach.
        cap = min(t.limits.max_tokens for t in self.config.tiers)
        default = min(t.limits.default_max_tokens for t in self.config.tiers)
        return GenerationRequest(
            request_id=request_id, messages=messages, prompt=prompt,
            max_tokens=min(body.requested_max_tokens or default, cap),
            temperature=body.temperature, top_p=body.top_p, stop=body.stop_sequences,
            task=task.name, raw_input=raw_input,
        )

    async def _route(
        self, request: GenerationRequest, task: TaskConfig, raw_input: str, endpoint: str
    ) -> tuple[CascadeOutcome, dict[str, Any]]:
        started = time.perf_counter()
        live = self.live.snapshot()  # one request, one consistent set of versions
        start_tier = live.policy.start_tier(task.name, raw_input, self._tier_names)
        if start_tier not in self._tier_names:
            logger.warning(
                "policy %s picked unknown tier %r; starting at the cheapest", live.policy_version, start_tier
            )
            start_tier = self._tier_names[0]
        score = live.scores.for_task(task.name)
        versions = (live.thresholds_version, live.policy_version)
        try:
            outcome = await run_cascade(
                request,
                self._tiers,
                start=self._tier_names.index(start_tier),
                threshold_for=live.threshold_for(task.name),
                uncertainty_of=lambda result: score(AnswerEvidence.from_result(result, task.name, raw_input)),
            )
        except AllTiersFailedError as exc:
            self.metrics.record_failure(task.name, "all_tiers_failed")
            latency_ms = _ms_since(started)
            await self._log(query_record(
                request, task, endpoint, raw_input, start_tier, None, None, latency_ms, *versions, error=str(exc)
            ))
            raise
        latency_ms = _ms_since(started)
        routing = routing_object(task, start_tier, outcome, self.config.frontier, *versions)
        self.metrics.record_outcome(task.name, outcome, latency_ms, routing["saved_usd"])
        await self._log(
            query_record(request, task, endpoint, raw_input, start_tier, outcome, routing, latency_ms, *versions)
        )
        self._remember(request.request_id, task.name, outcome)
        # A task with no metric cannot be labelled: auditing it would only pay for frontier calls.
        if task.metric != "none":
            self.feed.maybe_audit(request, task.name, outcome, score, raw_input)
        return outcome, routing

    async def _log(self, record: dict[str, Any]) -> None:
        if self.query_log is not None:
            await self.query_log.append("queries", record)

    async def _recall(self, response_id: str) -> dict[str, Any] | None:
        """What ``_remember`` kept for a response, from this replica or the shared query log.

        With several router replicas, feedback often reaches another replica than the one that
        answered; that one logged the answer (fsync'd) before sending it.
        """
        known = self._recent.get(response_id)
        if known is not None or self.query_log is None:
            return known
        record = await asyncio.to_thread(find_record, self.config.storage.log_uri, response_id)
        if record is None or record.get("status") != "ok":
            return None
        attempt = next((a for a in record.get("attempts", []) if a.get("tier") == record["answered_by"]), None)
        return {"task": record["task"], "answered_by": record["answered_by"],
                "uncertainty": attempt.get("uncertainty") if attempt else None}

    def _remember(self, response_id: str, task: str, outcome: CascadeOutcome) -> None:
        """What feedback on this response needs: the task, the answering tier and its uncertainty."""
        attempt = next((a for a in outcome.attempts if a.tier == outcome.answered_by), None)
        uncertainty = attempt.uncertainty if attempt else None
        self._recent[response_id] = {"task": task, "answered_by": outcome.answered_by, "uncertainty": uncertainty}
        while len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
