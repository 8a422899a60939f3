"""The GPU smoke test's CPU-side behaviour: its config is valid, and without a GPU it stops at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from routenlp_ray.bench.gpu_smoke import TASKS, smoke_config
from tests.conftest import REPO_ROOT


def test_smoke_config_has_two_gpu_vllm_tiers_sharing_one_gpu(tmp_path: Path) -> None:
    config = smoke_config(tmp_path / "small", tmp_path / "large", tmp_path)
    assert [(t.engine.type, t.engine.device) for t in config.tiers] == [("vllm", "gpu"), ("vllm", "gpu")]
    assert sum(t.resources.num_gpus for t in config.tiers) <= 1
    assert set(TASKS) <= {t.name for t in config.tasks}


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(has_cuda(), reason="checks the no-GPU path; with a GPU the command would start the real smoke run")
def test_without_a_gpu_it_fails_fast_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, "-m", "routenlp_ray.cli", "bench", "gpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    assert not out.exists()
