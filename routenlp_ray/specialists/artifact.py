"""Versioned specialist artifacts: one folder per task head, a manifest that checksums every file.

Layout of one artifact (a release of the specialist tier)::

    <folder>/manifest.json          format, version, encoder identity, one entry per task
    <folder>/<task>/head.json       the head's kind and settings (label map, max length, ...)
    <folder>/<task>/...             LoRA adapter and classifier weights, or the answer cache

A head holds only what was trained: a LoRA adapter and the classifier on top of the packaged
encoder, or the cache's vectors and answers. The encoder itself is never copied, so an
artifact is a few MB. The manifest pins the encoder by a fingerprint of its weights, and every
file by its SHA-256, so a corrupt file, or a head trained on another encoder, is refused at
load time with the offending file named, before it can serve a single answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.models.sources import resolve_model_source

MANIFEST = "manifest.json"
HEAD_FILE = "head.json"
# The (query, frontier answer) pairs a head was fitted on, one JSON list per line: the loop refits
# a head on them plus its newly mined pairs. A head built by reference to data rows has none.
PAIRS_FILE = "pairs.jsonl"
ARTIFACT_FORMAT = 1

HeadKind = Literal["label", "entities", "cache"]


class HeadEntry(StrictModel):
    """One task's head as the manifest lists it."""

    kind: HeadKind = Field(description="label (sequence classifier), entities (BIO tagger) or cache (answer cache).")
    files: dict[str, str] = Field(description="File name (relative to the task folder) -> SHA-256.")
    data_fingerprint: str = Field(description="SHA-256 of the (query, frontier answer) pairs it was distilled from.")
    n_examples: int = Field(ge=0, description="Training pairs.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Held-out metrics measured at training time.")


class EncoderIdentity(StrictModel):
    source: str = Field(description="Where the encoder comes from (a folder or package:<pkg>/<path>).")
    fingerprint: str = Field(description="SHA-256 over the encoder's weight and config files.")


class SpecialistManifest(StrictModel):
    format: int = Field(ARTIFACT_FORMAT, description="Artifact layout version.")
    version: str = Field(description="Artifact version, shown in routing and logs.")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    encoder: EncoderIdentity
    tasks: dict[str, HeadEntry] = Field(description="Task -> head.")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def encoder_fingerprint(source: str) -> str:
    """SHA-256 over the encoder folder's weights and configs (names and contents), cached per process."""
    folder = resolve_model_source(source)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def data_fingerprint(texts: list[str], answers: list[str]) -> str:
    digest = hashlib.sha256()
    for text, answer in zip(texts, answers):
        digest.update(json.dumps([text, answer], ensure_ascii=False).encode())
    return digest.hexdigest()


def write_pairs(task_folder: Path, texts: list[str], answers: list[str]) -> Path:
    path = Path(task_folder) / PAIRS_FILE
    with path.open("w") as handle:
        for text, answer in zip(texts, answers):
            handle.write(json.dumps([text, answer], ensure_ascii=False) + "\n")
    return path


def read_pairs(task_folder: Path) -> tuple[list[str], list[str]] | None:
    """The pairs a head's folder carries, or None when it carries none."""
    path = Path(task_folder) / PAIRS_FILE
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [str(r[0]) for r in rows], [str(r[1]) for r in rows]
    except (ValueError, IndexError, TypeError) as exc:
        raise ArtifactError(f"specialist artifact: {str(path)!r} is not a list of [query, answer] rows: {exc}") from None


def write_artifact(
    folder: str | os.PathLike[str],
    version: str,
    encoder_source: str,
    heads: dict[str, tuple[Path, HeadEntry]],
) -> Path:
    """Assemble task folders into one artifact, staged and renamed into place (never half-written).

    ``heads`` maps a task to (its saved head folder, its manifest entry without checksums).
    """
    target = Path(folder)
    if target.exists():
        raise ArtifactError(f"specialist artifact {str(target)!r} already exists; versions are immutable")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        entries: dict[str, HeadEntry] = {}
        for task, (head_dir, entry) in sorted(heads.items()):
            shutil.copytree(head_dir, staging / task)
            files = {p.name: sha256_file(p) for p in sorted((staging / task).iterdir()) if p.is_file()}
            entries[task] = entry.model_copy(update={"files": files})
        manifest = SpecialistManifest(
            version=version,
            encoder=EncoderIdentity(source=encoder_source, fingerprint=encoder_fingerprint(encoder_source)),
            tasks=entries,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifest(folder: str | os.PathLike[str]) -> SpecialistManifest:
    file = Path(folder) / MANIFEST
    try:
        return SpecialistManifest.model_validate_json(file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"specialist artifact: {str(file)!r} does not exist") from None
    except ValidationError as exc:
        raise ArtifactError(f"specialist artifact: {str(file)!r} is invalid: {exc}") from None


def verify_artifact(folder: str | os.PathLike[str], tasks: list[str] | None = None) -> SpecialistManifest:
    """Check the manifest, the encoder and every file's checksum; raise ``ArtifactError`` naming the file.

    ``tasks`` are the tasks the tier must serve; each needs a head in the artifact.
    """
    root = Path(folder)
    manifest = read_manifest(root)
    if manifest.format != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"specialist artifact {str(root / MANIFEST)!r} has format {manifest.format}; this version reads {ARTIFACT_FORMAT}"
        )
    missing = sorted(set(tasks or []) - set(manifest.tasks))
    if missing:
        raise ArtifactError(
            f"specialist artifact {str(root / MANIFEST)!r} has no head for tasks {missing}; it has {sorted(manifest.tasks)}"
        )
    actual = encoder_fingerprint(manifest.encoder.source)
    if actual != manifest.encoder.fingerprint:
        raise ArtifactError(
            f"specialist artifact {str(root / MANIFEST)!r} was trained on encoder {manifest.encoder.source!r} with "
            f"fingerprint {manifest.encoder.fingerprint[:12]}, but that encoder is now {actual[:12]}"
        )
    for task in tasks or list(manifest.tasks):
        entry = manifest.tasks[task]
        for name, expected in entry.files.items():
            path = root / task / name
            if not path.is_file():
                raise ArtifactError(f"specialist artifact: {str(path)!r} is missing")
            if sha256_file(path) != expected:
                raise ArtifactError(f"specialist artifact: {str(path)!r} does not match its checksum (corrupt or edited)")
    return manifest


def read_head(task_folder: Path) -> dict[str, Any]:
    try:
        return json.loads((task_folder / HEAD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"specialist artifact: {str(task_folder / HEAD_FILE)!r} cannot be read: {exc}") from None
