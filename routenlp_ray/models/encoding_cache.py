"""A disk cache of encoder outputs, keyed by text, shared by every process on one machine.

A loop refit fits a head on its base pairs plus a few new ones, and before this cache every
refit re-encoded all of the base pairs: minutes per task on a 2-core CPU, for vectors that had
not changed. The cache stores each text's vectors once per encoder identity (source, int8 or
not, max length), so a refit encodes only what it has never seen. It is exact: the encoder runs
one text at a time when quantised (see :mod:`routenlp_ray.models.encoder`), so a vector does not
depend on what it was encoded next to, and a cached vector is the one a fresh encode returns.

SQLite in WAL mode lets a Ray Train worker and the driver read and write it at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["EncodingCache"]


class EncodingCache:
    """``get_many(kind, keys)`` / ``put_many(kind, items)`` of float32 arrays under one encoder identity."""

    def __init__(self, path: str | Path, identity: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, shape TEXT NOT NULL, data BLOB NOT NULL)"
            )
            self._db.commit()

    def _key(self, kind: str, key: str) -> str:
        return hashlib.sha256(json.dumps([self.identity, kind, key]).encode()).hexdigest()

    def get_many(self, kind: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached arrays of those ``keys`` that have one."""
        hashed = {self._key(kind, k): k for k in dict.fromkeys(keys)}
        found: dict[str, np.ndarray] = {}
        names = list(hashed)
        with self._lock:
            for start in range(0, len(names), 500):  # SQLite's bound-parameter limit
                chunk = names[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, shape, data FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                for name, shape, data in rows:
                    found[hashed[name]] = np.frombuffer(data, dtype=np.float32).reshape(json.loads(shape)).copy()
        return found

    def put_many(self, kind: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        rows = [(self._key(kind, k), json.dumps(list(v.shape)), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for k, v in items]
        if not rows:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO vectors (key, shape, data) VALUES (?, ?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
