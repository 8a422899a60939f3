"""Shared fixtures: small configs and the path of the shared evaluation data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ROUTENLP_DATA", REPO_ROOT.parent / "shared" / "data"))


def require_data_dir() -> Path:
    """The shared evaluation data's folder; the calling test is skipped, saying why, where it is missing."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared evaluation data not found at {DATA_DIR} (set ROUTENLP_DATA)")
    return DATA_DIR


def tier_named(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The tier ``name`` of a config dict (tests edit tiers by name, not by position)."""
    return next(t for t in config["tiers"] if t["name"] == name)


def small_config_dict(tmp_path: Path, replay_file: Path, **overrides: Any) -> dict[str, Any]:
    """A two-tier config: a cheap tier and a replay frontier over ``replay_file``."""
    config: dict[str, Any] = {
        "tiers": [
            {
                "name": "cheap",
                "engine": {"type": "replay", "records": [str(replay_file)]},
                "pricing": {"input_per_1m": 0.1, "output_per_1m": 0.2},
            },
            {
                "name": "frontier",
                "engine": {"type": "replay", "records": [str(replay_file)]},
                "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0},
            },
        ],
        "tasks": [
            {"name": "chat", "metric": "none"},
            {"name": "cs_intent", "system_prompt": "Answer with the intent label.", "metric": "macro_f1"},
        ],
        "storage": {"log_uri": str(tmp_path / "log"), "spool_dir": str(tmp_path / "spool")},
        "server": {"default_task": "chat"},
    }
    config.update(overrides)
    return config


@pytest.fixture()
def replay_file(tmp_path: Path) -> Path:
    path = tmp_path / "replay.jsonl"
    path.write_text(
        '{"task": "cs_intent", "input": "where is my new card?", "reference": "card_arrival"}\n'
        '{"task": "chat", "input": "hello", "reference": "Hello! How can I help?"}\n'
    )
    return path
