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
from collections.abc import AsyncIterator, Mapping
from typing import Any

from routenlp_ray._exceptions import (
    AllTiersFailedError,
    DuplicateFeedbackError,
    RequestError,
    StreamInterruptedError,
    UnknownResponseError,
    UnknownTaskError,
)
from routenlp_ray.cascade import CascadeOutcome, CascadeTier, TierCall, run_cascade
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.conformal.scores import AnswerEvidence
from routenlp_ray.engines.base import GenerationRequest, stream_within_limits, within_limits
from routenlp_ray.monitoring.audits import AuditSampler
from routenlp_ray.serving.feed import MonitorFeed, MonitorSink
from routenlp_ray.serving.http import RequestGate
from routenlp_ray.serving.live import LiveArtifacts
from routenlp_ray.serving.metadata import live_stream_headers, routing_headers, system_fingerprint
from routenlp_ray.serving.responses import MODEL_PREFIX, envelope, feedback_label, now_iso, query_record, routing_object
from routenlp_ray.serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from routenlp_ray.serving.streaming import SSE_DONE, ChunkWriter, QueueSink, StreamedResponse, sse_event
from routenlp_ray.tasks.spec import TaskSpec
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
            CascadeTier(name=t.name, call=within_limits(tiers[t.name], t.limits), pricing=t.pricing,
                        timeout_s=t.timeout_s, tasks=frozenset(t.tasks) if t.tasks is not None else None,
                        stream=stream_within_limits(getattr(tiers[t.name], "stream", None), t.limits))
            for t in config.tiers
        ]
        self._tier_names = [t.name for t in config.tiers]
        self._tasks = {t.name: t for t in config.tasks}
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Audits and feedback labels go to the coverage monitor (a deployment handle on Ray).
        sampler = AuditSampler(config.monitoring.audit_rate, seed=config.monitoring.seed)
        self.feed = MonitorFeed(monitor_sink if config.monitoring.enabled else None, self._tiers, sampler)

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
        known = self._recent.get(body.response_id) or await self._served_elsewhere(body.response_id)
        if known is None:
            raise UnknownResponseError(
                f"unknown response_id {body.response_id!r}: no response with this id was served", param="response_id"
            )
        given = known.setdefault("feedback_from", set())
        if body.source in given:
            raise DuplicateFeedbackError(
                f"feedback from source {body.source!r} on response {body.response_id!r} was recorded already",
                param="response_id",
            )
        given.add(body.source)
        record = {
            "id": f"fb-{uuid.uuid4().hex}",
            "ts": now_iso(),
            "trace_id": trace_id,
            "response_id": body.response_id,
            "accepted": body.accepted,
            "score": body.score,
            "comment": body.comment,
            "source": body.source,
            "matched": True,
            "task": known["task"],
            "answered_by": known["answered_by"],
        }
        if self.query_log is not None:
            await self.query_log.append("feedback", record)
        label = feedback_label(body.accepted, body.score)
        if label is not None and known["answered_by"] != self._tier_names[-1]:
            self.feed.send({
                "kind": "feedback", "tier": known["answered_by"], "task": known["task"],
                "uncertainty": known["uncertainty"], "correct": label, "query_id": body.response_id, "ts": time.time(),
            })
        return {"object": "feedback", "id": record["id"], "response_id": body.response_id, "recorded": True}

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

    async def log_rejection(self, endpoint: str, error: RequestError, trace_id: str | None = None) -> None:
        """A refused request is logged too: a spike of 4xx is something operators look for."""
        self.metrics.record_rejection(error.code or error.error_type)
        record = {
            "id": f"rej-{uuid.uuid4().hex}", "ts": now_iso(), "kind": "rejected", "endpoint": endpoint,
            "trace_id": trace_id,
            "http_status": error.status_code, "error_type": error.error_type, "code": error.code,
            "param": error.param, "error": error.message,
        }
        if self.query_log is not None:
            await self.query_log.append("events", record)

    async def log_server_error(self, endpoint: str, status: int, code: str, detail: str) -> str:
        """A 5xx is logged with its detail, which the client does not see; returns the event id to quote."""
        self.metrics.record_failure("-", code)
        event_id = f"err-{uuid.uuid4().hex}"
        record = {
            "id": event_id, "ts": now_iso(), "kind": "server_error", "endpoint": endpoint,
            "http_status": status, "code": code, "error": detail,
        }
        if self.query_log is not None:
            await self.query_log.append("events", record)
        return event_id

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
        """Run the cascade; answer as soon as it is done or its last tier starts streaming, whichever is first.

        A failure before any text went out raises here (the client gets an HTTP error); after
        that, the stream ends with an error event.
        """
        sink = QueueSink()
        job = asyncio.ensure_future(self._route(request, task, raw_input, endpoint, trace_id, sink))
        job.add_done_callback(lambda done: _close_stream(sink, done))
        started = asyncio.ensure_future(sink.started.wait())
        try:
            await asyncio.wait({job, started}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the request timed out before any text was ready
            job.cancel()
            raise
        finally:
            started.cancel()
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        if sink.start is None:
            outcome, routing = job.result()  # raises AllTiersFailedError
            response = self._response(request.request_id, task, outcome, routing, chat)
            writer = ChunkWriter(request.request_id, chat, response["model"], response["system_fingerprint"],
                                 include_usage)
            return StreamedResponse(
                routing_headers(request.request_id, routing),
                _buffered_events(writer, outcome.answer.text, response["usage"], routing, outcome.answer.finish_reason),
            )
        versions = (sink.context["thresholds_version"], sink.context["policy_version"])
        headers = live_stream_headers(request.request_id, trace_id, task.name, sink.context["start_tier"],
                                      sink.start.tier, sink.start.attempts, versions)
        fingerprint = system_fingerprint(*versions)
        writer = ChunkWriter(request.request_id, chat, f"{MODEL_PREFIX}/{task.name}", fingerprint, include_usage)
        return StreamedResponse(headers, self._live_events(writer, sink, job))

    async def _live_events(
        self, writer: ChunkWriter, sink: QueueSink, job: asyncio.Future[tuple[CascadeOutcome, dict[str, Any]]]
    ) -> AsyncIterator[str]:
        async for piece in sink.pieces():
            yield sse_event(writer.text(piece))
        try:
            outcome, routing = await job
        except Exception as exc:  # the tier broke mid-answer: tell the client in the stream itself
            logger.warning("a streamed answer broke off: %s", exc)
            yield sse_event({"error": {"message": str(exc), "type": "server_error", "param": None,
                                       "code": "stream_interrupted"}})
            yield SSE_DONE
            return
        answer = outcome.answer
        usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                 "total_tokens": answer.prompt_tokens + answer.completion_tokens}
        for chunk in writer.finish(answer.finish_reason, usage, routing):
            yield sse_event(chunk)
        yield SSE_DONE

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
                self._tiers,
                start=self._tier_names.index(start_tier),
                threshold_for=live.threshold_for(task.name),
                uncertainty_of=lambda result: score(AnswerEvidence.from_result(result, task.name, raw_input)),
                sink=sink,
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
        self._remember(request.request_id, task.name, outcome)
        # A task with no metric cannot be labelled: auditing it would only pay for frontier calls.
        if task.metric != "none":
            self.feed.maybe_audit(request, task.name, outcome, score, raw_input)
        return outcome, routing

    async def _log(self, record: dict[str, Any], trace_id: str | None) -> None:
        # The client's x-request-id (or Serve's own) ties a logged decision to the client's request.
        record["trace_id"] = trace_id
        if self.query_log is not None:
            await self.query_log.append("queries", record)

    async def _served_elsewhere(self, response_id: str) -> dict[str, Any] | None:
        """Feedback may reach another router replica than the answer came from: look the id up in the query log.

        The newest segments are read first and the search stops at the id; an unknown id costs a
        read of the newest 64 segments.
        """
        if self.query_log is None:
            return None
        found = await asyncio.to_thread(find_record, self.config.storage.log_uri, response_id)
        if found is None or found.get("status") != "ok":
            return None
        attempt = next((a for a in found.get("attempts", []) if a.get("tier") == found.get("answered_by")), {})
        known = {"task": found["task"], "answered_by": found["answered_by"], "uncertainty": attempt.get("uncertainty")}
        self._recent[response_id] = known
        return known

    def _remember(self, response_id: str, task: str, outcome: CascadeOutcome) -> None:
        """What feedback on this response needs: the task, the answering tier and its uncertainty."""
        attempt = next((a for a in outcome.attempts if a.tier == outcome.answered_by), None)
        uncertainty = attempt.uncertainty if attempt else None
        self._recent[response_id] = {"task": task, "answered_by": outcome.answered_by, "uncertainty": uncertainty}
        while len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)


def _close_stream(sink: QueueSink, job: asyncio.Future[Any]) -> None:
    sink.close()
    if not job.cancelled():
        # Marks a failure as seen even when the client left before its error event: it is logged already.
        job.exception()


async def _buffered_events(
    writer: ChunkWriter, text: str, usage: dict[str, int], routing: dict[str, Any], finish_reason: str
) -> AsyncIterator[str]:
    """An answer that was whole before the stream began (a cheaper tier's, accepted): one text chunk."""
    yield sse_event(writer.text(text, routing))
    for chunk in writer.finish(finish_reason, usage, routing):
        yield sse_event(chunk)
    yield SSE_DONE


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
