"""Read JSON Lines files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from routenlp_ray._exceptions import ConfigError


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line_number, parsed_row)`` for every non-blank line; a line that is not JSON is a ConfigError."""
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{str(path)!r} line {line_no} is not valid JSON: {exc}") from None
