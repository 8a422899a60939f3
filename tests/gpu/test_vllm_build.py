"""`serve_config.yaml` builds its application graph with Ray Serve LLM (built, never deployed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from routenlp_ray.config import load_config
from routenlp_ray.engines import GenerationRequest
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


def test_router_asks_llm_servers_for_logprobs_and_reads_them() -> None:
    from ray.serve.llm.openai_api_models import ChatCompletionResponse

    from routenlp_ray.engines.serve_llm import ServeLLMTierClient

    tier = load_config(REPO_ROOT / "serve_config.yaml").tier("small")
    sent: list[Any] = []

    class FakeStream:
        """Stands in for the streaming handle call: yields one non-streaming response."""

        def __init__(self, body: Any) -> None:
            sent.append(body)

        def __aiter__(self) -> "FakeStream":
            self._done = False
            return self

        async def __anext__(self) -> Any:
            if self._done:
                raise StopAsyncIteration
            self._done = True
            return ChatCompletionResponse.model_validate({
                "id": "x", "object": "chat.completion", "created": 0, "model": "small",
                "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "card_arrival"},
                    "logprobs": {"content": [
                        {"token": "card", "logprob": -0.1, "bytes": None, "top_logprobs": []},
                        {"token": "_arrival", "logprob": -0.3, "bytes": None, "top_logprobs": []},
                    ]},
                }],
                "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
            })

    class FakeHandle:
        def options(self, **kwargs: Any) -> "FakeHandle":
            assert kwargs == {"stream": True}
            return self

        class chat:  # noqa: N801 - mirrors the handle's method attribute
            @staticmethod
            def remote(body: Any) -> FakeStream:
                return FakeStream(body)

    client = ServeLLMTierClient(FakeHandle(), tier)
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "where is my card?"}], max_tokens=8)
    result = asyncio.run(client(request))
    assert sent[0].logprobs is True and sent[0].model == "small" and sent[0].max_tokens == 8
    assert result.text == "card_arrival" and result.token_logprobs == [-0.1, -0.3]
    assert (result.prompt_tokens, result.completion_tokens) == (20, 2)


def test_streaming_request_to_llm_servers_asks_for_usage_and_logprobs() -> None:
    from routenlp_ray.engines.serve_llm import ServeLLMTierClient

    tier = load_config(REPO_ROOT / "serve_config.yaml").tier("small")
    client = ServeLLMTierClient(type("Handle", (), {"options": lambda self, **kw: self})(), tier)
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "where is my card?"}], max_tokens=8)
    method, body = client.build_request(request, stream=True)
    assert method == "chat" and body.stream is True and body.logprobs is True
    assert body.stream_options.include_usage is True
