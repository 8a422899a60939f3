"""Versioned releases of loop artifacts, published and rolled back atomically.

A release is a folder ``<root>/<version>/`` holding ``manifest.json`` and its artifacts:
per tier, a LoRA adapter (transformers tiers) or a specialist artifact (specialist tiers); a
threshold table; optionally a router. It is written under a
temporary name and renamed into place, so a half-written release is never visible.
``<root>/CURRENT`` names the live version and the one before it; it is replaced with
``os.replace``, so readers see the old pointer or the new one, never a mix. Running router
and tier replicas poll it (``ReleaseWatcher``) and swap the new artifacts in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.config._base import StrictModel

POINTER = "CURRENT"


class ReleaseManifest(StrictModel):
    version: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="tier -> its artifact folder (LoRA adapter or specialist artifact), relative to the release.",
    )
    thresholds: str | None = Field(None, description="Threshold table file, relative to the release.")
    router: str | None = Field(None, description="Router artifact folder, relative to the release.")
    report: dict[str, Any] = Field(default_factory=dict, description="The iteration report's summary.")


class Pointer(StrictModel):
    version: str
    previous: str | None = None
    updated_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


class Release:
    """One published release, with absolute paths to its artifacts."""

    def __init__(self, root: Path, manifest: ReleaseManifest) -> None:
        self.root, self.manifest = root, manifest

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def folder(self) -> Path:
        return self.root / self.version

    def adapter_for(self, tier: str) -> Path | None:
        relative = self.manifest.adapters.get(tier)
        return self.folder / relative if relative else None

    @property
    def thresholds_path(self) -> Path | None:
        return self.folder / self.manifest.thresholds if self.manifest.thresholds else None

    @property
    def router_path(self) -> Path | None:
        return self.folder / self.manifest.router if self.manifest.router else None


class ReleaseStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- writing --------------------------------------------------------------------------
    def publish(
        self,
        version: str,
        adapters: dict[str, Path] | None = None,
        thresholds: Path | None = None,
        router: Path | None = None,
        report: dict[str, Any] | None = None,
    ) -> Release:
        """Copy the artifacts into a new release and make it current; a version is never overwritten."""
        target = self.root / version
        if target.exists():
            raise ArtifactError(f"release {version!r} already exists in {str(self.root)!r}; versions are immutable")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{version}."))
        manifest = ReleaseManifest(version=version, report=report or {})
        for tier, folder in (adapters or {}).items():
            shutil.copytree(folder, staging / "adapters" / tier)
            manifest.adapters[tier] = f"adapters/{tier}"
        if thresholds is not None:
            shutil.copy2(thresholds, staging / "thresholds.json")
            manifest.thresholds = "thresholds.json"
        if router is not None:
            shutil.copytree(router, staging / "router")
            manifest.router = "router"
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        os.replace(staging, target)
        self._point_to(version)
        return Release(self.root, manifest)

    def rollback(self) -> Release:
        """Make the previous release current again."""
        pointer = self._pointer()
        if pointer is None or pointer.previous is None:
            raise ArtifactError(f"nothing to roll back to in {str(self.root)!r}")
        self._point_to(pointer.previous)
        return self.get(pointer.previous)

    def activate(self, version: str) -> Release:
        """Make any published version current (a roll-forward, or a rollback further back)."""
        release = self.get(version)
        self._point_to(version)
        return release

    def _point_to(self, version: str) -> None:
        old = self._pointer()
        pointer = Pointer(version=version, previous=old.version if old and old.version != version else None)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{POINTER}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(pointer.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / POINTER)

    # -- reading --------------------------------------------------------------------------
    def _pointer(self) -> Pointer | None:
        try:
            return Pointer.model_validate_json((self.root / POINTER).read_text())
        except FileNotFoundError:
            return None

    def current_version(self) -> str | None:
        pointer = self._pointer()
        return pointer.version if pointer else None

    def current(self) -> Release | None:
        version = self.current_version()
        return self.get(version) if version else None

    def get(self, version: str) -> Release:
        try:
            manifest = ReleaseManifest.model_validate_json((self.root / version / "manifest.json").read_text())
        except FileNotFoundError:
            raise ArtifactError(f"no release {version!r} in {str(self.root)!r}") from None
        return Release(self.root, manifest)

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(found, key=lambda p: (p / "manifest.json").stat().st_mtime)]


class ReleaseWatcher:
    """Tells a replica when ``CURRENT`` names a release it has not applied yet."""

    def __init__(self, root: str | os.PathLike[str], poll_interval_s: float = 5.0) -> None:
        self.store = ReleaseStore(root)
        self.poll_interval_s = poll_interval_s
        self.applied: str | None = None
        self._checked_at = 0.0

    def poll(self, force: bool = False) -> Release | None:
        """The current release if it changed since the last ``mark_applied``; cheap to call often."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.poll_interval_s:
            return None
        self._checked_at = now
        try:
            version = self.store.current_version()
        except (OSError, ValueError):
            return None  # a pointer being replaced or unreadable: look again next time
        if version is None or version == self.applied:
            return None
        return self.store.get(version)

    def mark_applied(self, version: str) -> None:
        self.applied = version


