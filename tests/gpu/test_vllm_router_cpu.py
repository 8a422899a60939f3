"""The router calling a real Ray Serve LLM ``LLMServer`` through its handle, on CPU.

``LLMServer``'s own ``engine_cls`` seam swaps vLLM for a scripted engine (the only thing
needing a GPU); everything between the openai client and that engine is real.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from routenlp_ray.config import parse_config
from tests.cpu.conftest import free_port

pytestmark = pytest.mark.vllm


def scripted_engine_class() -> type:
    from ray.llm._internal.serve.core.engine.protocol import LLMEngine
    from ray.serve.llm.openai_api_models import ChatCompletionResponse

    class ScriptedEngine(LLMEngine):
        """Confident on easy prompts, unsure on ones that contain 'hard'."""

        def __init__(self, llm_config: Any) -> None:
            self.llm_config = llm_config

        async def start(self) -> None:
            return None

        async def check_health(self) -> None:
            return None

        async def resolve_lora(self, lora_model: Any) -> None:
            return None

        async def reset_prefix_cache(self) -> None:
            return None

        def routing_stats(self) -> dict:
            return {}

        async def completions(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
            yield None

        async def embeddings(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
            yield None

        async def transcriptions(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
            yield None

        async def chat(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:
            prompt = request.messages[-1]["content"]
            logprob = -3.0 if "hard" in prompt else -0.05
            content = [{"token": t, "logprob": logprob, "bytes": None, "top_logprobs": []} for t in ("an", "swer")]
            yield ChatCompletionResponse.model_validate({
                "id": "fake", "object": "chat.completion", "created": 0, "model": request.model,
                "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "small answer"},
                    "logprobs": {"content": content} if request.logprobs else None,
                }],
                "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
            })

    return ScriptedEngine


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import ray
    from ray import serve

    from deployments.builders import build_router, build_tier
    from routenlp_ray.engines.serve_llm import build_vllm_tier

    port = free_port()
    if ray.is_initialized():
        ray.shutdown()
    # Build after init: building an LLMServer app reads the runtime context, which would
    # otherwise start a default local Ray.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tmp: Path = tmp_path_factory.mktemp("vllm-router")
    replay = tmp / "replay.jsonl"
    replay.write_text(json.dumps({"task": "chat", "input": "a hard question", "reference": "frontier answer"}) + "\n")
    config = parse_config({
        "tiers": [
            {"name": "small", "engine": {"type": "vllm", "model_source": "scripted/small"},
             "pricing": {"input_per_1m": 0.04, "output_per_1m": 0.08}},
            {"name": "frontier", "engine": {"type": "replay", "records": [str(replay)]},
             "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": {"num_cpus": 0.1}},
        ],
        "tasks": [{"name": "chat"}],
        "cascade": {"default_threshold": 1.0},
        "storage": {"log_uri": str(tmp / "log"), "spool_dir": str(tmp / "spool")},
        "server": {"default_task": "chat", "resources": {"num_cpus": 0.1}},
    })
    small = config.tier("small")
    llm_app = build_vllm_tier(
        small,
        overrides={
            "accelerator_config": {"kind": "cpu"},
            "log_engine_metrics": False,
            "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                                  "ray_actor_options": {"num_cpus": 0}},
        },
        bind_kwargs={"engine_cls": scripted_engine_class()},
    )
    serve.run(build_router(config, {"frontier": build_tier(config.tier("frontier"))}, {"small": llm_app}), name="vllm")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_confident_llm_server_answer_is_accepted(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    response = client.chat.completions.create(model="routenlp/chat", messages=[{"role": "user", "content": "easy"}])
    routing = response.model_extra["routing"]
    assert routing["answered_by"] == "small" and response.choices[0].message.content == "small answer"
    assert routing["attempts"][0]["uncertainty"] == pytest.approx(0.05)
    assert routing["attempts"][0]["prompt_tokens"] == 12


def test_unsure_llm_server_answer_escalates(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model="routenlp/chat", messages=[{"role": "user", "content": "a hard question"}]
    )
    routing = response.model_extra["routing"]
    assert [(a["tier"], a["status"]) for a in routing["attempts"]] == [("small", "escalated"), ("frontier", "accepted")]
    assert routing["attempts"][0]["uncertainty"] == pytest.approx(3.0)
    assert response.choices[0].message.content == "frontier answer"
