"""The manual: docs/ builds with ``mkdocs build --strict`` (no broken link between pages), and the
README landing page links only to files that exist, keeps the two make commands and stays short.

The client snippets of docs/clients.md are run against real Serve by tests/cpu/test_clients.py;
here they are only checked to be there and to compile, so a moved or broken snippet fails fast.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def heading_anchors(page: Path) -> set[str]:
    """The ids Python-Markdown's toc extension gives a page's headings (mkdocs' default slugify)."""
    anchors = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6} (.*)", line)
        if match:
            text = re.sub(r"[`*]", "", match.group(1))
            text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
            anchors.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower()))
    return anchors


def test_mkdocs_build_strict_has_no_broken_internal_link(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the dev extra: pip install -e '.[dev]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO_ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pages = ["index", "quickstart", "configuration", "cascade-and-calibration", "loop", "operations", "clients",
             "benchmarks", "development"]
    for page in pages:
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page
    # results/README.md is part of the site (docs/results links to results/), not a copy of it.
    assert (site / "results" / "index.html").is_file()


def test_every_relative_link_in_the_readme_resolves_to_a_file_and_heading() -> None:
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert len(targets) >= 10, targets  # the landing page links into docs/; a regex that finds none proves nothing
    for target in targets:
        path, _, anchor = target.partition("#")
        file = (README.parent / path).resolve()
        assert file.is_file(), f"README.md links to {target!r}, which is not a file"
        assert file.is_relative_to(REPO_ROOT), target
        if anchor:
            assert anchor in heading_anchors(file), f"README.md links to {target!r}: no heading with that anchor"


def test_readme_is_a_landing_page_with_the_two_make_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    # .ci/run runs "the README's test command"; make serve is the one way to run the embedded default.
    assert "make serve   # set up .venv and run the embedded default on http://127.0.0.1:8000/v1\n" in text
    assert "make test    # set up .venv and run the test suite\n" in text


def test_readme_openai_example_is_the_quickstarts() -> None:
    readme_blocks = PYTHON_BLOCK.findall(README.read_text())
    assert len(readme_blocks) == 1
    assert readme_blocks[0] in PYTHON_BLOCK.findall((DOCS / "quickstart.md").read_text())


@pytest.mark.parametrize("client", ["openai", "langchain", "litellm"])
def test_client_snippets_run_by_the_cpu_tests_are_in_the_clients_page_and_compile(client: str) -> None:
    match = re.search(rf"```python\n# client: {client}\n(.*?)```", (DOCS / "clients.md").read_text(), re.S)
    assert match, f"docs/clients.md has no '# client: {client}' snippet"
    compile(match.group(1), f"docs/clients.md:{client}", "exec")
