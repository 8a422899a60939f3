"""cluster.yaml can host serve_config.yaml: every vLLM tier fits a GPU worker group."""

from __future__ import annotations

import yaml

from routenlp_ray.config import load_config
from tests.conftest import REPO_ROOT


def test_every_vllm_tier_fits_a_gpu_worker_group() -> None:
    cluster = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    node_types = cluster["available_node_types"]
    assert "GPU" not in node_types[cluster["head_node_type"]]["resources"]
    for tier in load_config(REPO_ROOT / "serve_config.yaml").tiers:
        gpus_needed = tier.engine.engine_kwargs.get("tensor_parallel_size", 1)
        marker = f"accelerator_type:{tier.engine.accelerator_type}"
        hosts = [n for n in node_types.values() if n["resources"].get(marker, 0) >= gpus_needed]
        assert hosts, f"tier {tier.name!r} needs {gpus_needed} x {tier.engine.accelerator_type}"
        assert sum(n["max_workers"] for n in hosts) >= 1
