"""`serve_config.yaml` builds its application graph with Ray Serve LLM (built, never deployed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from routenlp_ray.config import load_config
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """Building an LLMServer app reads Ray's runtime context, so a local Ray must exist."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def serve_args() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def test_gpu_serve_config_builds_llm_servers_behind_the_router() -> None:
    from ray.serve import Application

    from deployments.builders import build_app

    app = build_app(serve_args())
    assert isinstance(app, Application)
    router = app._bound_deployment
    assert router.name == "router"
    config_arg, tier_apps, llm_apps = router.init_args
    assert tier_apps == {}
    config = load_config(REPO_ROOT / "serve_config.yaml")
    assert set(llm_apps) == {t.name for t in config.tiers}
    for tier in config.tiers:
        deployment = llm_apps[tier.name]._bound_deployment
        assert deployment.func_or_class.__name__ == "LLMServer", deployment.func_or_class
        autoscaling = deployment._deployment_config.autoscaling_config
        assert (autoscaling.min_replicas, autoscaling.max_replicas) == (
            tier.autoscaling.min_replicas,
            tier.autoscaling.max_replicas,
        )
        llm_config = deployment.init_kwargs.get("llm_config") or deployment.init_args[0]
        assert llm_config.model_id == tier.name
        assert llm_config.accelerator_type == tier.engine.accelerator_type
        assert llm_config.engine_kwargs["max_logprobs"] >= 1
        # Each engine worker (one per tensor-parallel rank) holds one GPU; the replica reserves nothing more.
        assert llm_config.accelerator_config.kind == "gpu"
        assert llm_config.placement_group_config["bundle_per_worker"] == {
            "CPU": tier.resources.num_cpus, "GPU": tier.resources.num_gpus}
        assert deployment._deployment_config.max_ongoing_requests == tier.max_ongoing_requests


def test_cpu_serve_config_builds_a_cpu_llm_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.builders import build_app

    (tmp_path / "models" / "smollm2-student-v1").mkdir(parents=True)  # building only checks that it exists
    monkeypatch.setenv("ROUTENLP_CACHE", str(tmp_path))
    args = yaml.safe_load((REPO_ROOT / "serve_config.vllm-cpu.yaml").read_text())["applications"][0]["args"]
    llm_apps = build_app(args)._bound_deployment.init_args[2]
    deployment = llm_apps["smollm2"]._bound_deployment
    llm_config = deployment.init_kwargs.get("llm_config") or deployment.init_args[0]
    assert llm_config.accelerator_config.kind == "cpu" and llm_config.accelerator_type is None
    assert llm_config.engine_kwargs["dtype"] == "float32"
    assert llm_config.placement_group_config["bundle_per_worker"] == {"CPU": 0.25}
    assert llm_config.runtime_env["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert Path(llm_config.model_loading_config.model_source).is_absolute()


def test_requests_ask_for_logprobs_usage_and_the_prompt_limit() -> None:
    from routenlp_ray.engines import GenerationRequest
    from routenlp_ray.engines.serve_llm import ServeLLMTierClient

    tier = load_config(REPO_ROOT / "serve_config.vllm-cpu.yaml").tier("smollm2")
    client = ServeLLMTierClient(type("Handle", (), {"options": lambda self, **kw: self})(), tier)
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "where is my card?"}], max_tokens=8)
    method, body = client.build_request(request, stream=True)
    assert method == "chat" and body.stream is True and body.logprobs is True and body.top_logprobs == 5
    assert body.stream_options.include_usage is True
    assert body.truncate_prompt_tokens == tier.engine.max_input_tokens == 7936
