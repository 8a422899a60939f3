"""A durable, append-only query and feedback log, readable with ``ray.data``.

Records are JSON lines in segment files under ``<log_uri>/<stream>/``. ``append`` returns
only after the record is written and fsync'ed, so an acknowledged record survives a
replica crash. One writer thread commits every record waiting at that moment with a
single fsync (group commit), which keeps the cost per request small under load.

For a remote ``log_uri`` (``s3://``, ``gs://`` ... any pyarrow filesystem) records are first
made durable in a local spool folder, and sealed segments are uploaded. Segments left in
the spool by a process that died are uploaded by the next log opened on that spool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

from routenlp_ray.config.storage import StorageConfig

logger = logging.getLogger("routenlp.querylog")

STREAMS = ("queries", "feedback", "events", "labels")
_STOP = object()


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local folders."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


@dataclass
class _Segment:
    path: Path
    handle: Any
    opened_at: float
    records: int = 0


class QueryLog:
    """Durable JSONL log with one folder per stream (``queries``, ``feedback``, ``events``)."""

    def __init__(self, config: StorageConfig, writer_label: str | None = None) -> None:
        self.config = config
        self.filesystem, self.root = resolve_filesystem(config.log_uri)
        self.is_remote = not isinstance(self.filesystem, pafs.LocalFileSystem)
        self._write_dir = Path(config.spool_dir).expanduser().resolve() if self.is_remote else Path(self.root)
        self._host = socket.gethostname().replace("-", "_")
        label = "".join(c for c in (writer_label or uuid.uuid4().hex[:8]) if c.isalnum() or c == "_")
        self.writer_id = f"{self._host}-{os.getpid()}-{label or 'w'}"
        self._segments: dict[str, _Segment] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        for stream in STREAMS:
            (self._write_dir / stream).mkdir(parents=True, exist_ok=True)
        if self.is_remote:
            self._upload_orphans()
        self._thread = threading.Thread(target=self._run, name="querylog-writer", daemon=True)
        self._thread.start()

    # -- writing --------------------------------------------------------------------------
    async def append(self, stream: str, record: dict[str, Any]) -> None:
        """Return once the record is durable."""
        await asyncio.wrap_future(self._submit(stream, record))

    def append_sync(self, stream: str, record: dict[str, Any]) -> None:
        self._submit(stream, record).result()

    def _submit(self, stream: str, record: dict[str, Any]) -> concurrent.futures.Future[None]:
        if stream not in STREAMS:
            raise ValueError(f"unknown log stream {stream!r}; known: {list(STREAMS)}")
        if self._closed:
            raise RuntimeError("the query log is closed")
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        line = json.dumps(record, ensure_ascii=False, default=str, allow_nan=False) + "\n"
        self._queue.put((stream, line, future))
        return future

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Commit what is queued, seal every segment and upload it when the log is remote."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> "QueryLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._seal_expired()
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            self._commit([item for item in batch if item is not _STOP])
            self._seal_expired()
            if stop:
                for stream in list(self._segments):
                    self._seal(stream)
                return

    def _commit(self, batch: list[tuple[str, str, concurrent.futures.Future[None]]]) -> None:
        """Write a batch, make it durable with one fsync per touched segment, then acknowledge."""
        touched: dict[str, _Segment] = {}
        errors: dict[int, BaseException] = {}
        for position, (stream, line, _) in enumerate(batch):
            try:
                segment = self._segment_for(stream)
                segment.handle.write(line)
                segment.records += 1
                touched[stream] = segment
                if segment.records >= self.config.segment_max_records:
                    self._sync(segment)
                    self._seal(stream)
                    del touched[stream]
            except BaseException as exc:  # report to the caller; never kill the writer
                errors[position] = exc
        sync_errors: dict[str, BaseException] = {}
        for stream, segment in touched.items():
            try:
                self._sync(segment)
            except BaseException as exc:
                sync_errors[stream] = exc
        for position, (stream, _, future) in enumerate(batch):
            error = errors.get(position) or sync_errors.get(stream)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)

    def _sync(self, segment: _Segment) -> None:
        segment.handle.flush()
        if self.config.fsync:
            os.fsync(segment.handle.fileno())

    def _segment_for(self, stream: str) -> _Segment:
        segment = self._segments.get(stream)
        if segment is None:
            name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.writer_id}-{uuid.uuid4().hex[:6]}.jsonl"
            path = self._write_dir / stream / name
            segment = _Segment(path=path, handle=path.open("a", encoding="utf-8"), opened_at=time.monotonic())
            self._segments[stream] = segment
        return segment

    def _seal_expired(self) -> None:
        now = time.monotonic()
        for stream, segment in list(self._segments.items()):
            if now - segment.opened_at >= self.config.segment_max_age_s:
                self._seal(stream)

    def _seal(self, stream: str) -> None:
        segment = self._segments.pop(stream)
        segment.handle.close()
        if self.is_remote:
            try:
                self._upload(segment.path, stream)
            except Exception:  # the records stay durable in the spool; the next log uploads them
                logger.exception("upload of %s to %s failed; it stays in the spool", segment.path, self.root)

    # -- remote upload --------------------------------------------------------------------
    def _upload(self, local: Path, stream: str) -> None:
        target_dir = f"{self.root.rstrip('/')}/{stream}"
        self.filesystem.create_dir(target_dir, recursive=True)
        with local.open("rb") as source, self.filesystem.open_output_stream(f"{target_dir}/{local.name}") as sink:
            sink.write(source.read())
        local.unlink()

    def _upload_orphans(self) -> None:
        for stream in STREAMS:
            for file in sorted((self._write_dir / stream).glob("part-*.jsonl")):
                if not self._writer_alive(file.name):
                    self._upload(file, stream)

    def _writer_alive(self, segment_name: str) -> bool:
        parts = segment_name.split("-")
        # part-<time>-<host>-<pid>-<nonce>-<nonce>.jsonl
        if len(parts) < 5 or parts[2] != self._host:
            return True  # another host's spool: leave it to that host
        try:
            os.kill(int(parts[3]), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True


def segment_paths(log_uri: str, stream: str) -> tuple[pafs.FileSystem, list[str]]:
    filesystem, root = resolve_filesystem(log_uri)
    selector = pafs.FileSelector(f"{root.rstrip('/')}/{stream}", allow_not_found=True)
    paths = sorted(info.path for info in filesystem.get_file_info(selector) if info.path.endswith(".jsonl"))
    return filesystem, paths


def read_records(log_uri: str, stream: str = "queries") -> list[dict[str, Any]]:
    """Every record of a stream, oldest segment first (small logs, tests, the CLI)."""
    filesystem, paths = segment_paths(log_uri, stream)
    records: list[dict[str, Any]] = []
    for path in paths:
        with filesystem.open_input_stream(path) as handle:
            for line in handle.read().decode("utf-8").splitlines():
                if line.strip():
                    records.append(json.loads(line))
    return records


def find_record(log_uri: str, record_id: str, stream: str = "queries", max_segments: int = 64) -> dict[str, Any] | None:
    """The record with ``id == record_id`` among the newest ``max_segments`` segments, or None.

    Segment names start with their opening time, so the newest are read first; a line is parsed
    only if it holds the id. Records still in another node's spool (remote logs) are not seen.
    """
    filesystem, paths = segment_paths(log_uri, stream)
    needle = json.dumps(record_id)
    for path in reversed(paths[-max_segments:]):
        with filesystem.open_input_stream(path) as handle:
            for line in handle.read().decode("utf-8").splitlines():
                if needle in line:
                    record = json.loads(line)
                    if record.get("id") == record_id:
                        return record
    return None


def read_dataset(log_uri: str, stream: str = "queries") -> Any:
    """The stream as a ``ray.data.Dataset`` (needs a running or local Ray)."""
    import ray.data

    # Log columns such as token_logprobs are ragged lists with nulls (a tier without logprobs):
    # Ray Data's casting of list columns to tensors fails on them in to_pandas().
    ray.data.DataContext.get_current().enable_tensor_extension_casting = False
    filesystem, paths = segment_paths(log_uri, stream)
    if not paths:
        return ray.data.from_items([])
    return ray.data.read_json(paths, filesystem=filesystem)
