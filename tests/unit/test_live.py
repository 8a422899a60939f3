"""``LiveArtifacts``: every hot swap, the snapshot a request takes, and following releases and the monitor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from routenlp_ray.config import parse_config
from routenlp_ray.conformal import ThresholdTable
from routenlp_ray.releases import ReleaseStore
from routenlp_ray.serving import LiveArtifacts
from routenlp_ray.telemetry import QueryLog, read_records
from tests.conftest import small_config_dict


class Sent:
    """What a Serve handle's ``.remote()`` returns, as far as the router cares: already sent, awaitable."""

    def __await__(self):
        return iter(())


class FakeMonitor:
    """A ``MonitorLink`` that records what it was handed and offers one table."""

    def __init__(self, offer: ThresholdTable | None = None) -> None:
        self.adopted: list[str] = []
        self.offer = offer

    def adopt(self, table: dict[str, Any]) -> Any:
        self.adopted.append(table["version"])
        return Sent()

    async def audit_rates(self) -> dict[str, float]:
        return {}

    async def current(self, known_version: str | None) -> dict[str, Any] | None:
        if self.offer is None or self.offer.version == known_version:
            return None
        return self.offer.model_dump(mode="json")


def make_live(tmp_path: Path, replay_file: Path, monitor: FakeMonitor | None = None, **overrides: Any):
    config = parse_config(small_config_dict(tmp_path, replay_file, **overrides))
    log = QueryLog(config.storage)
    return LiveArtifacts(config, query_log=log, monitor=monitor), config, log


def test_a_snapshot_is_not_changed_by_a_later_swap(tmp_path: Path, replay_file: Path) -> None:
    live, _, log = make_live(tmp_path, replay_file, cascade={"default_threshold": 0.5})
    before = live.snapshot()
    assert before.threshold_for("cs_intent")("cheap") == 0.5
    assert live.apply_thresholds(ThresholdTable(version="v2", thresholds={"cheap": {"cs_intent": 0.1}}), reason="t")
    assert before.thresholds_version == "none" and before.threshold_for("cs_intent")("cheap") == 0.5
    after = live.snapshot()
    assert after.thresholds_version == "v2" and after.threshold_for("cs_intent")("cheap") == 0.1
    assert after.threshold_for("chat")("cheap") == 0.5  # the default still fills the gaps
    log.close()


def test_reconfigure_logs_its_event_and_hands_the_monitor_the_new_baseline(tmp_path: Path, replay_file: Path) -> None:
    monitor = FakeMonitor()
    live, config, log = make_live(tmp_path, replay_file, monitor)
    artifact = ThresholdTable(version="cal-7", thresholds={"cheap": {"cs_intent": 1.0}}).save(tmp_path / "t.json")
    assert live.reconfigure({"thresholds_path": str(artifact)}) == {
        "thresholds_version": "cal-7", "policy_version": "cheapest"
    }
    assert monitor.adopted == ["cal-7"]
    with pytest.raises(ValueError):
        live.reconfigure({"no_such_field": 1})
    assert live.thresholds.version == "cal-7" and monitor.adopted == ["cal-7"]
    log.close()
    [event] = read_records(config.storage.log_uri, "events")
    assert event["event"] == "reconfigure" and event["changes"] == {"thresholds_path": str(artifact)}


def test_the_same_thresholds_twice_are_applied_once(tmp_path: Path, replay_file: Path) -> None:
    live, config, log = make_live(tmp_path, replay_file)
    table = ThresholdTable(version="v2", thresholds={"cheap": {"cs_intent": 0.3}})
    assert live.apply_thresholds(table, reason="coverage monitor")
    assert not live.apply_thresholds(table, reason="coverage monitor")
    log.close()
    [event] = read_records(config.storage.log_uri, "events")
    assert event["event"] == "thresholds_applied" and event["reason"] == "coverage monitor"
    assert event["changes"] == [{"tier": "cheap", "task": "cs_intent", "before": None, "after": 0.3}]


async def test_following_applies_a_published_release_once_and_tells_the_monitor(
    tmp_path: Path, replay_file: Path
) -> None:
    monitor = FakeMonitor()
    live, config, log = make_live(
        tmp_path, replay_file, monitor, releases={"path": str(tmp_path / "releases"), "poll_interval_s": 0.001}
    )
    thresholds = ThresholdTable(version="rel-1", thresholds={"cheap": {"cs_intent": 0.7}}).save(tmp_path / "r.json")
    ReleaseStore(tmp_path / "releases").publish("rel-1", thresholds=thresholds)
    await live.follow_releases()
    time.sleep(0.01)  # past the poll interval
    await live.follow_releases()  # nothing new: nothing applied twice
    snapshot = live.snapshot()
    assert (snapshot.release, snapshot.thresholds_version) == ("rel-1", "rel-1")
    assert monitor.adopted == ["rel-1"]
    log.close()
    events = [e["event"] for e in read_records(config.storage.log_uri, "events")]
    assert events == ["thresholds_applied", "release_applied"]


async def test_polling_the_monitor_only_moves_forward(tmp_path: Path, replay_file: Path) -> None:
    live, _, log = make_live(tmp_path, replay_file, FakeMonitor())
    live.monitor = FakeMonitor(offer=ThresholdTable(version="live-2", thresholds={"cheap": {"cs_intent": 0.9}}))
    await live.poll_monitor()
    assert live.thresholds.version == "live-2"
    older = ThresholdTable(version="live-1", created_at="2000-01-01T00:00:00+00:00")
    live.monitor = FakeMonitor(offer=older)
    await live.poll_monitor()
    assert live.thresholds.version == "live-2"
    log.close()


async def test_following_starts_only_when_there_is_something_to_follow(tmp_path: Path, replay_file: Path) -> None:
    idle, _, log = make_live(tmp_path, replay_file)
    idle.ensure_following()
    assert idle._poller is None
    log.close()
    live, _, log = make_live(tmp_path, replay_file, FakeMonitor())
    live.ensure_following()
    poller = live._poller
    live.ensure_following()
    assert poller is not None and live._poller is poller
    poller.cancel()
    log.close()


async def test_a_release_sets_what_its_specialist_serves_from_the_heads_it_carries(
    tmp_path: Path, replay_file: Path
) -> None:
    from routenlp_ray.specialists.artifact import read_manifest
    from tests.conftest import REPO_ROOT

    artifact = REPO_ROOT / "artifacts" / "specialists" / "embedded-v3"
    overrides = {
        "releases": {"path": str(tmp_path / "releases"), "poll_interval_s": 0.001},
        "tiers": [
            {"name": "specialist", "engine": {"type": "specialist", "path": str(artifact)}, "tasks": ["cs_intent"],
             "pricing": {"input_per_1m": 0.001, "output_per_1m": 0.001}},
            {"name": "frontier", "engine": {"type": "replay", "records": [str(replay_file)]},
             "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}},
        ],
        "tasks": [{"name": "chat", "metric": "none"}, {"name": "cs_intent"}, {"name": "legal_risk"}],
    }
    live, config, log = make_live(tmp_path, replay_file, **overrides)
    assert live.snapshot().tier_tasks == {}  # the configured tasks until a release says otherwise
    store = ReleaseStore(tmp_path / "releases")
    store.publish("rel-1", adapters={"specialist": artifact})
    await live.follow_releases()
    known = {t.name for t in config.tasks}
    served = live.snapshot().tier_tasks["specialist"]
    assert served == frozenset(set(read_manifest(artifact).tasks) & known) and "cs_intent" in served
    assert len(served) > 1  # the shipped artifact has heads for more tasks than this config gave the tier
    time.sleep(0.01)
    store.publish("rel-2")  # no artifact: the configured tasks again
    await live.follow_releases()
    assert live.snapshot().tier_tasks == {}
    log.close()
    applied = [e for e in read_records(config.storage.log_uri, "events") if e["event"] == "release_applied"]
    assert applied[0]["after"]["tier_tasks"] == {"specialist": sorted(served)}
