"""Everything the router swaps without a restart, in one place.

``LiveArtifacts`` owns the thresholds, the start policy, the per-task uncertainty scores and
the release version. They change three ways, each logged as an event in the query log:

- ``reconfigure(user_config)``: Serve's ``user_config`` (event ``reconfigure``);
- ``apply_thresholds(table, reason)``: thresholds decided by the coverage monitor (event
  ``thresholds_applied``);
- ``apply_release(release)``: a loop release's thresholds and router, and the tasks each
  specialist tier serves: those its released artifact has heads for, so a task's first head is
  served from the release that brings it (event ``release_applied``).

``follow()`` polls the release store and the coverage monitor and applies what changed; the
ingress starts it with ``ensure_following()`` from inside its event loop. The request path
never reads these attributes one by one: it takes one frozen ``LiveSnapshot`` per request,
so a swap half-way through a request cannot mix two versions.

No Ray here: the monitor is any ``MonitorLink`` (a deployment handle adapter on Ray).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

from pydantic import Field

from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.config.cascade import CascadeConfig
from routenlp_ray.conformal.selection import TaskScores
from routenlp_ray.conformal.thresholds import ThresholdTable, load_thresholds
from routenlp_ray.releases import Release, ReleaseWatcher
from routenlp_ray.routing.policy import StartTierPolicy, load_policy
from routenlp_ray.telemetry.querylog import QueryLog

logger = logging.getLogger("routenlp.router")


class RouterUserConfig(StrictModel):
    """What ``reconfigure()`` accepts: artifacts that change without a restart."""

    thresholds_path: str | None = Field(None, description="Threshold artifact to load.")
    thresholds: dict[str, dict[str, float]] | None = Field(
        None, description="Inline thresholds; override the artifact."
    )
    default_threshold: float | None = Field(None, description="Threshold for (tier, task) pairs with none.")
    start_policy: str | None = Field(None, description="'cheapest' or '<module>:<factory>'.")
    uncertainty: str | None = Field(None, description="Default uncertainty score; swap it with matching thresholds.")
    uncertainty_per_task: dict[str, str] | None = Field(None, description="Per-task uncertainty scores.")
    answer_scorer_path: str | None = Field(None, description="Learned answer scorer artifact.")
    router_path: str | None = Field(None, description="Router artifact for the 'router' start policy.")


class MonitorLink(Protocol):
    """The coverage monitor as the router reaches it.

    Each call must be under way once it returns, awaited or not, as a Serve handle's
    ``.remote()`` is: ``reconfigure`` is synchronous and does not await ``adopt``.
    """

    def adopt(self, table: dict[str, Any]) -> Awaitable[Any]: ...

    def current(self, known_version: str | None) -> Awaitable[dict[str, Any] | None]: ...

    def audit_rates(self) -> Awaitable[dict[str, float]]: ...


@dataclass(frozen=True)
class LiveSnapshot:
    """The artifacts one request is decided under."""

    cascade: CascadeConfig
    thresholds: ThresholdTable
    policy: StartTierPolicy
    scores: TaskScores
    release: str | None = None
    # tier -> the tasks it serves under the current release, where that differs from the config
    # (a specialist tier serves what its released artifact has heads for).
    tier_tasks: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def thresholds_version(self) -> str:
        return self.thresholds.version

    @property
    def policy_version(self) -> str:
        return self.policy.version

    def threshold_for(self, task: str) -> Callable[[str], float | None]:
        """``tier -> delta`` for one task, the cascade config's default filling the gaps."""
        table, default = self.thresholds, self.cascade.default_threshold

        def threshold(tier: str) -> float | None:
            return table.resolve(tier, task, default)

        return threshold


def policy_for(cascade: CascadeConfig) -> StartTierPolicy:
    return load_policy(cascade.start_policy, cascade.router_path)


def released_tier_tasks(release: Release, config: RouteNLPConfig) -> dict[str, frozenset[str]]:
    """The tasks each specialist tier serves under ``release``: the app's tasks its released artifact has
    heads for. Tiers the release carries no artifact for serve their configured tasks (not listed)."""
    from routenlp_ray.specialists.artifact import read_manifest

    known = {t.name for t in config.tasks}
    out = {}
    for tier in config.tiers:
        artifact = release.adapter_for(tier.name)
        if artifact is not None and tier.engine.type == "specialist":
            out[tier.name] = frozenset(set(read_manifest(artifact).tasks) & known)
    return out


class LiveArtifacts:
    """Holds the current ``LiveSnapshot`` and every way of replacing it."""

    def __init__(
        self, config: RouteNLPConfig, query_log: QueryLog | None = None, monitor: MonitorLink | None = None
    ) -> None:
        self.config = config
        self.query_log = query_log
        self.monitor = monitor
        cascade = config.cascade
        self._snapshot = LiveSnapshot(cascade, load_thresholds(cascade), policy_for(cascade), TaskScores(cascade))
        releases = config.releases
        self.releases = ReleaseWatcher(releases.path, releases.poll_interval_s) if releases.path else None
        self._poller: asyncio.Task[None] | None = None
        # Raised audit rates by task, set by the coverage monitor for cells short of evidence.
        self.audit_rates: dict[str, float] = {}

    def snapshot(self) -> LiveSnapshot:
        """What a request is decided under; take it once per request."""
        return self._snapshot

    @property
    def thresholds(self) -> ThresholdTable:
        return self._snapshot.thresholds

    @property
    def policy(self) -> StartTierPolicy:
        return self._snapshot.policy

    @property
    def release_version(self) -> str | None:
        return self._snapshot.release

    # -- swaps ------------------------------------------------------------------------------
    def reconfigure(self, user_config: Mapping[str, Any] | None) -> dict[str, str]:
        """Swap thresholds and policy in place. Invalid input raises and keeps the old versions.

        The new thresholds become the coverage monitor's baseline, so it does not push its old ones back.
        """
        current = self._snapshot
        update = RouterUserConfig.model_validate(dict(user_config or {}))
        changes = update.model_dump(exclude_none=True)
        cascade = self.config.cascade.model_copy(update=changes)
        cascade = CascadeConfig.model_validate(cascade.model_dump())  # re-run validation on the merged result
        thresholds = load_thresholds(cascade)
        policy = policy_for(cascade)
        scores = TaskScores(cascade) if cascade != current.cascade else current.scores
        before = {"thresholds_version": current.thresholds_version, "policy_version": current.policy_version}
        self._snapshot = replace(current, cascade=cascade, thresholds=thresholds, policy=policy, scores=scores)
        after = {"thresholds_version": thresholds.version, "policy_version": policy.version}
        logger.info("router reconfigured: %s -> %s", before, after)
        self._log_event({"event": "reconfigure", "before": before, "after": after, "changes": changes})
        if self.monitor is not None:
            self.monitor.adopt(thresholds.model_dump(mode="json"))
        return after

    def apply_thresholds(self, table: ThresholdTable, reason: str) -> bool:
        """Swap in thresholds decided elsewhere (the coverage monitor); logs every changed value."""
        before = self._snapshot.thresholds
        if table.version == before.version:
            return False
        changes = [
            {"tier": tier, "task": task, "before": before.get(tier, task), "after": delta}
            for tier, per_task in table.thresholds.items()
            for task, delta in per_task.items()
            if not before.has(tier, task) or before.get(tier, task) != delta
        ]
        self._snapshot = replace(self._snapshot, thresholds=table)
        logger.info("thresholds %s -> %s (%s): %s", before.version, table.version, reason, changes)
        self._log_event({
            "event": "thresholds_applied",
            "reason": reason,
            "before": {"thresholds_version": before.version},
            "after": {"thresholds_version": table.version},
            "changes": changes,
        })
        return True

    def apply_release(self, release: Release) -> None:
        """Take a loop release's thresholds and router; its adapters are the tier replicas' business."""
        before = {"release": self.release_version, "policy_version": self.policy.version}
        if release.thresholds_path is not None:
            self.apply_thresholds(ThresholdTable.load(release.thresholds_path), reason=f"release {release.version}")
        if release.router_path is not None:
            self._snapshot = replace(self._snapshot, policy=load_policy("router", str(release.router_path)))
        tier_tasks = released_tier_tasks(release, self.config)
        self._snapshot = replace(self._snapshot, release=release.version, tier_tasks=tier_tasks)
        after = {"release": release.version, "policy_version": self.policy.version,
                 "tier_tasks": {tier: sorted(tasks) for tier, tasks in tier_tasks.items()}}
        self._log_event({"event": "release_applied", "before": before, "after": after})

    # -- following the release store and the coverage monitor -----------------------------------
    def ensure_following(self) -> None:
        """Start ``follow()`` on the running loop when there is something to follow and it is not running."""
        wanted = self.monitor is not None or self.releases is not None
        if wanted and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self.follow())

    async def follow(self) -> None:
        intervals = [self.config.monitoring.poll_interval_s] if self.monitor is not None else []
        if self.releases is not None:
            intervals.append(self.releases.poll_interval_s)
        while True:
            await self.follow_releases()
            await self.poll_monitor()
            await asyncio.sleep(min(intervals))

    async def follow_releases(self) -> None:
        """Apply the release store's current release if it changed; a broken one is logged and skipped."""
        if self.releases is None:
            return
        release = self.releases.poll()
        if release is None:
            return
        try:
            self.apply_release(release)
        except Exception:
            logger.exception("could not apply release %s; keeping %s", release.version, self.release_version)
        self.releases.mark_applied(release.version)
        if self.monitor is not None:
            try:
                await self.monitor.adopt(self.thresholds.model_dump(mode="json"))
            except Exception as exc:
                logger.warning("could not hand release thresholds to the coverage monitor: %s", exc)

    async def poll_monitor(self) -> None:
        """Apply the coverage monitor's thresholds if they are newer than ours, and its audit rates."""
        if self.monitor is None:
            return
        try:
            rates = dict(await self.monitor.audit_rates())
            if rates != self.audit_rates:
                logger.info("audit rates %s -> %s (coverage monitor)", self.audit_rates, rates)
                self.audit_rates = rates
        except Exception as exc:
            logger.warning("could not poll the coverage monitor's audit rates: %s", exc)
        try:
            table = await self.monitor.current(self.thresholds.version)
            if table is not None:
                candidate = ThresholdTable.model_validate(table)
                # Only move forward: a monitor that has not yet adopted a newer release must not revert it.
                if candidate.created_at > self.thresholds.created_at:
                    self.apply_thresholds(candidate, reason="coverage monitor")
        except Exception as exc:  # the monitor being away must not affect serving
            logger.warning("could not poll the coverage monitor: %s", exc)

    def _log_event(self, record: dict[str, Any]) -> None:
        if self.query_log is not None:
            self.query_log.append_sync(
                "events", {"id": f"evt-{uuid.uuid4().hex}", "ts": datetime.now(timezone.utc).isoformat(), **record}
            )
