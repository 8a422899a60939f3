"""Embeddings cached on disk, keyed by a hash of the encoder's identity and the exact texts.

Benchmarks embed the same ~12k prompts on every run; with the transformer encoder that takes
minutes on a 2-core CPU. The cache lives under ``var/cache/embeddings`` (``ROUTENLP_CACHE``),
which is git-ignored, and a changed text, encoder or setting gives a new key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray.models.static_encoder import cache_root


def encoder_identity(encoder: Any) -> str:
    return "|".join(str(getattr(encoder, name, "")) for name in ("kind", "model_source", "max_length", "quantize"))


def cache_key(encoder: Any, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(encoder_identity(encoder).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:32]


def embed_cached(encoder: Any, texts: Sequence[str], cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
    file = folder / f"{cache_key(encoder, texts)}.npy"
    if file.exists():
        return np.load(file)
    embeddings = np.asarray(encoder.encode(list(texts)), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, embeddings)
    os.replace(tmp, file)
    return embeddings
