"""``bench/report.py``: every results file is stamped, written whole or not at all, figures beside it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routenlp_ray.bench.report import command_line, machine, write_report


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(report["xs"], report["xs"])
    fig.savefig(path, dpi=50)
    plt.close(fig)


def test_the_json_carries_the_body_after_the_command_time_and_machine(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "bench_x.json"
    report = write_report(out, {"benchmark": "x", "value": np.float64(0.5), "counts": np.arange(3), "path": tmp_path,
                                "n": np.int64(7), "tiers": {"b", "a"}}, command="routenlp bench x --out bench_x.json")
    written = json.loads(out.read_text())
    assert {k: written[k] for k in ("command", "created_at", "machine")} == {
        k: report[k] for k in ("command", "created_at", "machine")}
    assert list(written)[:4] == ["command", "created_at", "machine", "benchmark"]
    assert written["command"] == "routenlp bench x --out bench_x.json"
    assert written["value"] == 0.5 and written["counts"] == [0, 1, 2] and written["path"] == str(tmp_path)
    assert written["n"] == 7 and written["tiers"] == ["a", "b"]
    assert written["created_at"].endswith("+00:00")
    assert out.read_text().endswith("\n") and "\n  " in out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench_x.json"]
    plain = out.parent / "plain.txt"
    plain.write_text("")
    assert out.stat().st_mode == plain.stat().st_mode  # the usual permissions, not a temporary file's 0600


def test_the_machine_says_cpus_platform_python_and_versions() -> None:
    stamp = machine()
    assert set(stamp) == {"cpus", "python", "platform", "torch", "ray", "gpus"}
    assert stamp["cpus"] == os.cpu_count() and stamp["python"] == ".".join(map(str, sys.version_info[:3]))
    assert stamp["ray"] and stamp["torch"]  # both installed in the dev environment
    assert isinstance(stamp["gpus"], list)


def test_the_command_defaults_to_this_process_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A console script is named by its name, however it was found; arguments are shell-quoted.
    monkeypatch.setitem(sys.modules, "__main__", type(sys)("__main__"))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/routenlp", "bench", "load", "--out", "a b.json"])
    assert command_line() == "routenlp bench load --out 'a b.json'"
    assert write_report(tmp_path / "r.json", {})["command"] == "routenlp bench load --out 'a b.json'"
    assert command_line(["benchmarks/side.py", "x"]) == "python benchmarks/side.py x"


def test_a_module_run_with_python_m_is_named_by_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    main = type(sys)("__main__")
    main.__spec__ = type("Spec", (), {"name": "routenlp_ray.cli.__main__"})()
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert command_line(["/x/routenlp_ray/cli/__main__.py", "bench", "soak"]) == "python -m routenlp_ray.cli bench soak"


def test_markdown_and_figures_are_written_beside_the_json(tmp_path: Path) -> None:
    out = tmp_path / "bench_x.json"
    seen: list[dict[str, Any]] = []

    def markdown(report: dict[str, Any]) -> str:
        seen.append(report)
        return f"# x\n\n`{report['command']}` on {report['machine']['cpus']} CPUs\n"

    report = write_report(out, {"xs": [1, 2, 3]}, command="routenlp bench x", markdown=markdown,
                          figures={".png": _plot, "_other.png": _plot})
    assert seen == [report]
    assert out.with_suffix(".md").read_text() == f"# x\n\n`routenlp bench x` on {os.cpu_count()} CPUs\n"
    for name in ("bench_x.png", "bench_x_other.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_x.json", "bench_x.md", "bench_x.png",
                                                         "bench_x_other.png"]
    write_report(out, {"xs": [1]}, markdown="plain text")
    assert out.with_suffix(".md").read_text() == "plain text"


def test_compact_json_has_no_whitespace(tmp_path: Path) -> None:
    write_report(tmp_path / "r.json", {"a": [1, 2], "b": {"c": 1}}, command="c", indent=None)
    assert '"a":[1,2],"b":{"c":1}}' in (tmp_path / "r.json").read_text()


def test_a_body_that_cannot_be_serialized_leaves_no_file_and_keeps_the_old_report(tmp_path: Path) -> None:
    out = tmp_path / "bench_x.json"
    write_report(out, {"xs": [1]}, command="first", markdown="old", figures={".png": _plot})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):  # JSON keys must be strings, numbers or booleans
        write_report(out, {"xs": [1], "bad": {("a", "b"): 1}}, command="second", markdown="new",
                     figures={".png": _plot})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    fresh = tmp_path / "fresh" / "r.json"
    with pytest.raises(ValueError):  # a circular reference
        loop: dict[str, Any] = {}
        loop["self"] = loop
        write_report(fresh, {"loop": loop}, command="c")
    assert not fresh.exists() and not list(fresh.parent.glob("*"))


@pytest.mark.parametrize("failing", ["markdown", "figure"])
def test_a_failing_markdown_or_figure_leaves_nothing_behind(tmp_path: Path, failing: str) -> None:
    def boom(*_: Any) -> str:
        raise RuntimeError("no")

    markdown = boom if failing == "markdown" else "fine"
    figures = {".png": _plot, "_broken.png": boom} if failing == "figure" else {".png": _plot}
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "r.json", {"xs": [1]}, command="c", markdown=markdown, figures=figures)
    assert list(tmp_path.iterdir()) == []


def test_a_body_carrying_a_stamped_key_or_a_figure_not_png_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['command', 'machine'\]"):
        write_report(tmp_path / "r.json", {"machine": "mine", "command": "x"})
    with pytest.raises(ValueError, match="'.svg'"):
        write_report(tmp_path / "r.json", {}, figures={".svg": _plot})
    assert list(tmp_path.iterdir()) == []
