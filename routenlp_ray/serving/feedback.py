"""Feedback on served answers: find the answer (here or in the shared log), refuse repeats, log, tell the monitor."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import Any

from routenlp_ray._exceptions import DuplicateFeedbackError, UnknownResponseError
from routenlp_ray.cascade import CascadeOutcome
from routenlp_ray.serving.feed import MonitorFeed
from routenlp_ray.serving.responses import feedback_label, now_iso
from routenlp_ray.serving.schemas import FeedbackRequest
from routenlp_ray.telemetry.querylog import QueryLog, find_record

RECENT_RESPONSES = 50_000


class FeedbackDesk:
    """Remembers what feedback on each recent response needs, and records feedback against it.

    With several router replicas, feedback often reaches another replica than the one that
    answered; that one logged the answer (fsync'd) before sending it, so an id unknown here is
    looked up in the shared query log.
    """

    def __init__(self, log_uri: str, query_log: QueryLog | None, feed: MonitorFeed, last_tier: str) -> None:
        self._log_uri = log_uri
        self._query_log = query_log
        self._feed = feed
        self._last_tier = last_tier
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def remember(self, response_id: str, task: str, outcome: CascadeOutcome) -> None:
        """What feedback on this response needs: the task, the answering tier and its uncertainty."""
        attempt = next((a for a in outcome.attempts if a.tier == outcome.answered_by), None)
        uncertainty = attempt.uncertainty if attempt else None
        self._recent[response_id] = {"task": task, "answered_by": outcome.answered_by, "uncertainty": uncertainty}
        while len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)

    async def record(self, body: FeedbackRequest, trace_id: str | None = None) -> dict[str, Any]:
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
        if self._query_log is not None:
            await self._query_log.append("feedback", record)
        label = feedback_label(body.accepted, body.score)
        if label is not None and known["answered_by"] != self._last_tier:
            self._feed.send({
                "kind": "feedback", "tier": known["answered_by"], "task": known["task"],
                "uncertainty": known["uncertainty"], "correct": label, "query_id": body.response_id, "ts": time.time(),
            })
        return {"object": "feedback", "id": record["id"], "response_id": body.response_id, "recorded": True}

    async def _served_elsewhere(self, response_id: str) -> dict[str, Any] | None:
        """The answer as another replica logged it; the newest segments first, the newest 64 at most."""
        if self._query_log is None:
            return None
        found = await asyncio.to_thread(find_record, self._log_uri, response_id)
        if found is None or found.get("status") != "ok":
            return None
        attempt = next((a for a in found.get("attempts", []) if a.get("tier") == found.get("answered_by")), {})
        known = {"task": found["task"], "answered_by": found["answered_by"], "uncertainty": attempt.get("uncertainty")}
        self._recent[response_id] = known
        return known
