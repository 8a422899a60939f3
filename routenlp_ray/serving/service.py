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
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from routenlp_ray._exceptions import (
    AllTiersFailedError,
    StreamInterruptedError,
    UnknownTaskError,
)
from routenlp_ray.cascade import CascadeOutcome, CascadeTier, TierCall, run_cascade
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.conformal.scores import AnswerEvidence
from routenlp_ray.engines.base import GenerationRequest, stream_within_limits, within_limits
from routenlp_ray.monitoring.audits import AuditSampler
from routenlp_ray.serving.events import RequestEvents
from routenlp_ray.serving.feed import MonitorFeed, MonitorSink
from routenlp_ray.serving.feedback import FeedbackDesk
from routenlp_ray.serving.http import RequestGate
from routenlp_ray.serving.live import LiveArtifacts, LiveSnapshot
from routenlp_ray.serving.metadata import system_fingerprint
from routenlp_ray.serving.responses import MODEL_PREFIX, envelope, query_record, routing_object
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from routenlp_ray.serving.streaming import QueueSink, StreamedResponse, open_stream
from routenlp_ray.tasks.spec import TaskSpec
from routenlp_ray.telemetry.metrics import NullRouterMetrics, RouterMetrics
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.router")


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
        self.events = RequestEvents(query_log, self.metrics)
        self._tiers = [
            CascadeTier(name=t.name, call=within_limits(tiers[t.name], t.limits), pricing=t.pricing,
                        timeout_s=t.timeout_s, tasks=frozenset(t.tasks) if t.tasks is not None else None,
                        stream=stream_within_limits(getattr(tiers[t.name], "stream", None), t.limits))
            for t in config.tiers
        ]
        self._tier_names = [t.name for t in config.tiers]
        # Asked when every tier that serves a query's task failed (``cascade.fallback_tier``).
        self._fallback = next((t for t in self._tiers if t.name == config.cascade.fallback_tier), None)
        self._tasks = {t.name: t for t in config.tasks}
        # Audits and feedback labels go to the coverage monitor (a deployment handle on Ray).
        sampler = AuditSampler(
            config.monitoring.audit_rate, seed=config.monitoring.seed, raised=lambda: self.live.audit_rates
        )
        self.feed = MonitorFeed(monitor_sink if config.monitoring.enabled else None, self._tiers, sampler)
        self.feedback_desk = FeedbackDesk(config.storage.log_uri, query_log, self.feed, self._tier_names[-1])

    def resolve_task(self, model: str, task: str | None = None) -> TaskSpec:
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
    async def chat(self, body: ChatCompletionRequest, trace_id: str | None = None) -> dict[str, Any]:
        task, request, raw_input = self._chat_request(body)
        outcome, routing = await self._route(request, task, raw_input, "chat.completions", trace_id)
        return self._response(request.request_id, task, outcome, routing, chat=True)

    async def complete(self, body: CompletionRequest, trace_id: str | None = None) -> dict[str, Any]:
        task, request, raw_input = self._completion_request(body)
        outcome, routing = await self._route(request, task, raw_input, "completions", trace_id)
        return self._response(request.request_id, task, outcome, routing, chat=False)

    async def chat_stream(self, body: ChatCompletionRequest, trace_id: str | None = None) -> StreamedResponse:
        """``stream: true``: returns once the first text is ready, with the headers known by then."""
        task, request, raw_input = self._chat_request(body)
        return await self._stream(request, task, raw_input, "chat.completions", trace_id, body, chat=True)

    async def complete_stream(self, body: CompletionRequest, trace_id: str | None = None) -> StreamedResponse:
        task, request, raw_input = self._completion_request(body)
        return await self._stream(request, task, raw_input, "completions", trace_id, body, chat=False)

    def _chat_request(self, body: ChatCompletionRequest) -> tuple[TaskSpec, GenerationRequest, str]:
        task = self.resolve_task(body.model, body.task)
        self.gate.check_input_chars(sum(len(m.text) for m in body.messages))
        raw_input = next(m.text for m in reversed(body.messages) if m.role == "user")
        messages = task.apply_to_messages([{"role": m.role, "content": m.text} for m in body.messages])
        request = self._generation_request(f"chatcmpl-{uuid.uuid4().hex}", body, task, raw_input, messages=messages)
        return task, request, raw_input

    def _completion_request(self, body: CompletionRequest) -> tuple[TaskSpec, GenerationRequest, str]:
        task = self.resolve_task(body.model, body.task)
        raw_input = body.prompt_text
        self.gate.check_input_chars(len(raw_input))
        prompt = task.render_user_message(raw_input)
        if task.system_prompt:
            prompt = f"{task.system_prompt}\n\n{prompt}"
        request = self._generation_request(f"cmpl-{uuid.uuid4().hex}", body, task, raw_input, prompt=prompt)
        return task, request, raw_input

    def _response(
        self, response_id: str, task: TaskSpec, outcome: CascadeOutcome, routing: dict[str, Any], chat: bool
    ) -> dict[str, Any]:
        answer = outcome.answer
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": answer.text},
                      "finish_reason": answer.finish_reason, "logprobs": None}
            body = envelope(response_id, "chat.completion", task, choice, outcome, routing)
        else:
            choice = {"index": 0, "text": answer.text, "finish_reason": answer.finish_reason, "logprobs": None}
            body = envelope(response_id, "text_completion", task, choice, outcome, routing)
        body["system_fingerprint"] = system_fingerprint(routing["thresholds_version"], routing["policy_version"])
        return body

    async def feedback(self, body: FeedbackRequest, trace_id: str | None = None) -> dict[str, Any]:
        return await self.feedback_desk.record(body, trace_id)

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        return {"object": "list", "data": [self._model_entry(task, created) for task in self.config.tasks]}

    def model(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``: the task ``model_id`` names, as ``models`` lists it; unknown is a 404."""
        return self._model_entry(self.resolve_task(model_id), int(time.time()))

    @staticmethod
    def _model_entry(task: TaskSpec, created: int) -> dict[str, Any]:
        return {"id": f"{MODEL_PREFIX}/{task.name}", "object": "model", "created": created, "owned_by": MODEL_PREFIX,
                "description": task.description, "metric": task.metric, "quality_target": task.quality_target}

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

    async def drain(self) -> None:
        """Wait for pending audits (tests, shutdown)."""
        await self.feed.drain()

    # -- the request path -------------------------------------------------------------------
    def _generation_request(
        self,
        request_id: str,
        body: ChatCompletionRequest | CompletionRequest,
        task: TaskSpec,
        raw_input: str,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
    ) -> GenerationRequest:
        # max_tokens stays the client's ask (None: none); each tier applies its own default and cap.
        return GenerationRequest(
            request_id=request_id, messages=messages, prompt=prompt,
            max_tokens=body.requested_max_tokens,
            temperature=body.temperature, top_p=body.top_p, stop=body.stop_sequences,
            task=task.name, raw_input=raw_input,
        )

    async def _stream(
        self,
        request: GenerationRequest,
        task: TaskSpec,
        raw_input: str,
        endpoint: str,
        trace_id: str | None,
        body: ChatCompletionRequest | CompletionRequest,
        chat: bool,
    ) -> StreamedResponse:
        sink = QueueSink()
        job = asyncio.ensure_future(self._route(request, task, raw_input, endpoint, trace_id, sink))
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await open_stream(
            job, sink, lambda outcome, routing: self._response(request.request_id, task, outcome, routing, chat),
            request.request_id, task.name, trace_id, chat, include_usage,
        )

    async def _route(
        self,
        request: GenerationRequest,
        task: TaskSpec,
        raw_input: str,
        endpoint: str,
        trace_id: str | None = None,
        sink: QueueSink | None = None,
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
        if sink is not None:
            sink.context = {"start_tier": start_tier, "thresholds_version": versions[0], "policy_version": versions[1]}
        try:
            outcome = await run_cascade(
                request,
                self._tiers_under(live),
                start=self._tier_names.index(start_tier),
                threshold_for=live.threshold_for(task.name),
                uncertainty_of=lambda result: score(AnswerEvidence.from_result(result, task.name, raw_input)),
                sink=sink,
                fallback=self._fallback,
            )
        except (AllTiersFailedError, StreamInterruptedError) as exc:
            reason = "stream_interrupted" if isinstance(exc, StreamInterruptedError) else "all_tiers_failed"
            self.metrics.record_failure(task.name, reason)
            latency_ms = _ms_since(started)
            await self._log(query_record(
                request, task, endpoint, raw_input, start_tier, None, None, latency_ms, *versions, error=str(exc)
            ), trace_id)
            raise
        latency_ms = _ms_since(started)
        routing = routing_object(task, start_tier, outcome, self.config.frontier, *versions)
        routing["trace_id"] = trace_id
        self.metrics.record_outcome(task.name, outcome, latency_ms, routing["saved_usd"])
        await self._log(
            query_record(request, task, endpoint, raw_input, start_tier, outcome, routing, latency_ms, *versions),
            trace_id,
        )
        self.feedback_desk.remember(request.request_id, task.name, outcome)
        # A task with no metric cannot be labelled: auditing it would only pay for frontier calls.
        if task.metric != "none":
            self.feed.maybe_audit(request, task.name, outcome, score, raw_input)
        return outcome, routing

    def _tiers_under(self, live: LiveSnapshot) -> list[CascadeTier]:
        """The cascade's tiers, each serving the tasks the current release gives it."""
        if not live.tier_tasks:
            return self._tiers
        return [replace(t, tasks=live.tier_tasks[t.name]) if t.name in live.tier_tasks else t for t in self._tiers]

    async def _log(self, record: dict[str, Any], trace_id: str | None) -> None:
        # The client's x-request-id (or Serve's own) ties a logged decision to the client's request.
        record["trace_id"] = trace_id
        if self.query_log is not None:
            await self.query_log.append("queries", record)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
