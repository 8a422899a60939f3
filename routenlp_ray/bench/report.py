"""How every benchmark writes its results: one JSON file, its Markdown and figures beside it.

``write_report(out, body)`` stamps the body with the command line that made it, the time and
the machine, and writes ``out`` (JSON). With ``markdown``, ``out``'s ``.md`` is written too, and
each entry of ``figures`` is a PNG beside ``out``, named ``<stem><suffix>``::

    write_report("results/bench_load.json", body,
                 markdown=lambda report: load_markdown(report, "bench_load.png"),
                 figures={".png": plot_timeline})          # plot_timeline(report, path)

Every file is first written to a temporary name in the same folder and renamed into place
only once all of them are ready, the JSON last, so a failure (a value JSON cannot encode, a
plot that raises) leaves no partial file and no stale half of a report.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Markdown", "PlotFigure", "STAMPED_KEYS", "command_line", "machine", "write_report"]

# The report as written, stamp included -> its Markdown.
Markdown = Callable[[dict[str, Any]], str]
# (the report as written, a path ending in .png) -> draws the figure and saves it at that path.
PlotFigure = Callable[[dict[str, Any], Path], object]
# What write_report adds in front of every body; a body carrying one of these is refused.
STAMPED_KEYS = ("command", "created_at", "machine")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line this process was started with, as a shell would take it back.

    A console script is named by its name (``routenlp bench load ...``), a module run with
    ``python -m`` by the module, a script by its path as given.
    """
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        head = ["python", "-m", spec.name.removesuffix(".__main__")]
    elif not argv or not argv[0]:
        head = ["python"]
    elif argv[0].endswith(".py"):
        head = ["python", argv[0]]
    else:
        head = [Path(argv[0]).name]
    return shlex.join(head + argv[1:])


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on: CPUs, platform, Python, torch and Ray versions, GPUs (empty without one)."""
    return {
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "gpus": _gpus(),
    }


def write_report(
    out: str | Path,
    body: Mapping[str, Any],
    *,
    markdown: str | Markdown | None = None,
    figures: Mapping[str, PlotFigure] | None = None,
    command: str | None = None,
    indent: int | None = 2,
) -> dict[str, Any]:
    """Write ``body`` to ``out`` as JSON, stamped, with its Markdown and figures; returns the stamped report.

    The report is ``{"command", "created_at", "machine", **body}``, the body's values as given
    (not as JSON reads them back); ``command`` defaults to this process's ``command_line()``.
    ``markdown`` (text, or a function of the report) goes to ``out.with_suffix(".md")``;
    ``figures`` maps a name suffix (``".png"``, ``"_reliability.png"``) to a function drawing the
    report into that PNG. ``indent=None`` writes compact JSON. Parent folders are created;
    nothing is left behind when any part fails.
    """
    out = Path(out)
    clashing = sorted(set(STAMPED_KEYS) & set(body))
    if clashing:
        raise ValueError(f"the report body may not carry the stamped keys {clashing}; write_report adds them")
    for suffix in figures or {}:
        if not suffix.endswith(".png"):
            raise ValueError(f"a figure's name suffix must end in .png, got {suffix!r}")
    report = {
        "command": command_line() if command is None else command,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "machine": machine(),
        **body,
    }
    separators = None if indent is not None else (",", ":")
    text = json.dumps(report, indent=indent, separators=separators, default=_jsonable) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, final), renamed in this order
    try:
        for suffix, draw in (figures or {}).items():
            final = out.with_name(out.stem + suffix)
            draw(report, _stage(final, staged))
        if markdown is not None:
            content = markdown if isinstance(markdown, str) else markdown(report)
            _stage(out.with_suffix(".md"), staged).write_text(content)
        _stage(out, staged).write_text(text)
        while staged:
            temporary, final = staged[0]
            os.replace(temporary, final)
            staged.pop(0)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return report


def _stage(final: Path, staged: list[tuple[Path, Path]]) -> Path:
    """A new empty file beside ``final`` with the same suffix (matplotlib reads the format from it).

    Created with the usual permissions (not ``mkstemp``'s 0600), which the renamed file keeps.
    """
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp{final.suffix}")
    temporary.touch(exist_ok=False)
    staged.append((temporary, final))
    return temporary


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists, sets sorted; anything else as its ``str`` (a Path)."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """The GPUs, by name and memory: from torch when it is already imported, else from nvidia-smi, else none."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [f"{torch.cuda.get_device_name(i)}, "
                        f"{torch.cuda.get_device_properties(i).total_memory // 2**20} MiB"
                        for i in range(torch.cuda.device_count())]
        except Exception:  # a broken CUDA setup still gets its report written
            pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        found = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in found.stdout.splitlines() if line.strip()]
