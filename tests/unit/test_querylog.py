from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from routenlp_ray.config import StorageConfig
from routenlp_ray.telemetry import QueryLog, read_records


def test_records_are_readable_after_append(tmp_path: Path) -> None:
    config = StorageConfig(log_uri=str(tmp_path / "log"))
    with QueryLog(config) as log:
        log.append_sync("queries", {"id": "q1", "cost_usd": 0.5})
        log.append_sync("feedback", {"id": "f1", "response_id": "q1"})
        # Readable while the log is still open: every acknowledged record is on disk.
        assert [r["id"] for r in read_records(config.log_uri, "queries")] == ["q1"]
    assert [r["id"] for r in read_records(config.log_uri, "feedback")] == ["f1"]


async def test_concurrent_appends_are_all_committed(tmp_path: Path) -> None:
    config = StorageConfig(log_uri=str(tmp_path / "log"), segment_max_records=7)
    with QueryLog(config) as log:
        await asyncio.gather(*(log.append("queries", {"id": i}) for i in range(100)))
    ids = sorted(r["id"] for r in read_records(config.log_uri, "queries"))
    assert ids == list(range(100))
    assert len(list((tmp_path / "log" / "queries").glob("*.jsonl"))) == 15  # ceil(100 / 7) segments


def test_acknowledged_records_survive_a_killed_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os
        from routenlp_ray.config import StorageConfig
        from routenlp_ray.telemetry import QueryLog
        log = QueryLog(StorageConfig(log_uri={str(tmp_path / 'log')!r}))
        for i in range(20):
            log.append_sync("queries", {{"id": i}})
        print("acknowledged", flush=True)
        os._exit(9)  # no close(), no flush at exit: like a replica killed mid-flight
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "acknowledged" in out.stdout and out.returncode == 9
    assert [r["id"] for r in read_records(str(tmp_path / "log"), "queries")] == list(range(20))


def test_unknown_stream_and_closed_log_are_errors(tmp_path: Path) -> None:
    log = QueryLog(StorageConfig(log_uri=str(tmp_path / "log")))
    with pytest.raises(ValueError, match="unknown log stream 'nope'"):
        log.append_sync("nope", {})
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.append_sync("queries", {})


def test_non_finite_numbers_are_refused_not_written_as_invalid_json(tmp_path: Path) -> None:
    with QueryLog(StorageConfig(log_uri=str(tmp_path / "log"))) as log:
        with pytest.raises(ValueError):
            log.append_sync("queries", {"u": float("inf")})


def test_remote_log_spools_then_uploads(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = StorageConfig(log_uri="mock:///bucket/log", spool_dir=str(spool))
    log = QueryLog(config)
    log.append_sync("queries", {"id": "q1"})
    assert len(list((spool / "queries").glob("*.jsonl"))) == 1  # durable locally first
    filesystem = log.filesystem
    log.close()
    assert not list((spool / "queries").glob("*.jsonl"))
    uploaded = filesystem.get_file_info(pafs.FileSelector("bucket/log/queries"))
    assert len(uploaded) == 1
    with filesystem.open_input_stream(uploaded[0].path) as handle:
        assert b'"q1"' in handle.read()


def test_orphaned_spool_segments_of_dead_writers_are_uploaded(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "queries").mkdir(parents=True)
    import socket

    host = socket.gethostname().replace("-", "_")
    dead_pid = 2**22 + 12345  # above the default pid_max, so no live process has it
    orphan = spool / "queries" / f"part-20260101T000000-{host}-{dead_pid}-abc-def123.jsonl"
    orphan.write_text('{"id": "lost?"}\n')
    live = spool / "queries" / f"part-20260101T000000-{host}-{os.getpid()}-abc-def123.jsonl"
    live.write_text('{"id": "still being written"}\n')
    log = QueryLog(StorageConfig(log_uri="mock:///bucket/log", spool_dir=str(spool)))
    names = [info.base_name for info in log.filesystem.get_file_info(pafs.FileSelector("bucket/log/queries"))]
    assert names == [orphan.name]
    assert live.exists() and not orphan.exists()
    log.close()
