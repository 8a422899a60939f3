"""What the router sends the coverage monitor: audit samples and feedback labels, off the response path.

An audit asks the last tier for a reference answer to compare the cheap tiers' answers with
(``monitoring.audits``); a cheap tier skipped for want of a threshold is asked too, on audited
queries only, since without those labels the monitor could never calibrate it into use.
Nothing here may slow down or fail a response: deliveries run as background tasks and a
failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from routenlp_ray.cascade import SKIP_NO_THRESHOLD, CascadeOutcome, CascadeTier
from routenlp_ray.conformal.scores import AnswerEvidence, UncertaintyScore
from routenlp_ray.engines.base import GenerationRequest
from routenlp_ray.monitoring.audits import Audit, AuditedAnswer, AuditSampler, audit_from_outcome

logger = logging.getLogger("routenlp.router")

MonitorSink = Callable[[dict[str, Any]], Awaitable[Any]]


class MonitorFeed:
    """Samples answers for audit and delivers audits and feedback labels to ``sink``."""

    def __init__(self, sink: MonitorSink | None, tiers: Sequence[CascadeTier], sampler: AuditSampler) -> None:
        self.sink = sink
        self._tiers = list(tiers)
        self._sampler = sampler
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def maybe_audit(
        self, request: GenerationRequest, task: str, outcome: CascadeOutcome, score: UncertaintyScore, raw_input: str
    ) -> None:
        """Audit a sampled share of answered queries."""
        if self.sink is not None and self._sampler.sample(task):
            self._audit(request, task, outcome, score, raw_input)

    def send(self, payload: dict[str, Any]) -> None:
        self._spawn(self._deliver(payload))

    async def drain(self) -> None:
        """Wait for pending audits (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _audit(
        self, request: GenerationRequest, task: str, outcome: CascadeOutcome, score: UncertaintyScore, raw_input: str
    ) -> None:
        last = self._tiers[-1]
        audit = audit_from_outcome(request.request_id, task, outcome, last.name)
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
            self.send({"kind": "audit", **audit.to_dict()})
        else:
            self._spawn(self._shadow_audit(request, audit, unlabelled, score, raw_input))

    async def _shadow_audit(
        self,
        request: GenerationRequest,
        audit: Audit,
        unlabelled: list[CascadeTier],
        score: UncertaintyScore,
        raw_input: str,
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

    async def _deliver(self, payload: dict[str, Any]) -> None:
        if self.sink is None:
            return
        try:
            await self.sink(payload)
        except Exception as exc:
            logger.warning("could not send a %s label to the coverage monitor: %s", payload.get("kind"), exc)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
