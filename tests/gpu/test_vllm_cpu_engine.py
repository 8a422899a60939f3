"""The real vLLM engine (the vLLM CPU build) behind Ray Serve LLM, the router and the openai client.

No scripted engine: SmolLM2-135M-Instruct, exported from its package by ``routenlp export-model``,
runs in a real ``LLMServer`` deployment built by ``build_app`` from a ``type: vllm, device: cpu``
tier, exactly as ``serve_config.vllm-cpu.yaml`` and a GPU cluster's ``serve_config.yaml`` build theirs.

One Serve instance, two applications sharing nothing but the cluster:

- ``cascade`` (route ``/``): the vLLM tier, then a replay frontier. Two tasks with the same prompt:
  ``chat`` (threshold 50, any answer passes) and ``strict`` (threshold 0.001, no sampled answer passes).
- ``solo`` (route ``/solo``): the vLLM tier alone, so it is the last tier and streams live.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from routenlp_ray._exceptions import ConfigError
from routenlp_ray.config import parse_config
from tests.cpu.conftest import deploy_declaratively, serve_instance  # noqa: F401 - a fixture
from tests.gpu.conftest import vllm_cpu_model

pytestmark = pytest.mark.vllm

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is two plus two?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Which planet is called the red planet?",
]
MAX_TOKENS = 8


def vllm_tier(model: Path) -> dict[str, Any]:
    return {
        "name": "small",
        "engine": {
            "type": "vllm", "device": "cpu", "model_source": str(model), "top_logprobs": 2,
            "engine_kwargs": {"max_model_len": 1024, "max_num_seqs": 8},
            "cpu_kvcache_space_gb": 1, "cpu_threads_bind": "nobind", "max_input_tokens": 512,
        },
        "pricing": {"input_per_1m": 0.01, "output_per_1m": 0.02},
        "limits": {"default_max_tokens": MAX_TOKENS, "max_tokens": 64},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "resources": {"num_cpus": 0.5},
        # Once its replica is killed, queries queued for it escalate after this long.
        "timeout_s": 20,
    }


def app_config(tiers: list[dict[str, Any]], tasks: list[str], tmp: Path, **cascade: Any) -> dict[str, Any]:
    return {
        "tiers": tiers,
        "tasks": [{"name": t, "metric": "none"} for t in tasks],
        "cascade": {"alpha": 0.1, "uncertainty": "mean_nll", **cascade},
        "storage": {"log_uri": str(tmp / "log"), "spool_dir": str(tmp / "spool")},
        "server": {"default_task": "chat", "resources": {"num_cpus": 0.1}, "autoscaling": {"min_replicas": 1,
                                                                                          "max_replicas": 1}},
    }


@pytest.fixture(scope="module")
def apps(serve_instance: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # noqa: F811
    model = vllm_cpu_model()
    tmp = tmp_path_factory.mktemp("vllm-cpu")
    replay = tmp / "replay.jsonl"
    replay.write_text("".join(
        json.dumps({"task": task, "input": q, "reference": f"frontier answer {i}"}) + "\n"
        for i, q in enumerate(QUESTIONS) for task in ("chat", "strict")
    ))
    frontier = {"name": "frontier", "engine": {"type": "replay", "records": [str(replay)]},
                "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": {"num_cpus": 0.1}}
    cascade = app_config([vllm_tier(model), frontier], ["chat", "strict"], tmp / "cascade",
                         default_threshold=50.0, thresholds={"small": {"strict": 0.001}})
    solo = app_config([vllm_tier(model)], ["chat"], tmp / "solo", default_threshold=50.0)
    deploy_declaratively([
        {"name": "cascade", "route_prefix": "/", "import_path": "deployments.builders:build_app", "args": cascade},
        {"name": "solo", "route_prefix": "/solo", "import_path": "deployments.builders:build_app", "args": solo},
    ], timeout_s=900)
    port = serve_instance
    yield {"cascade": f"http://127.0.0.1:{port}/v1", "solo": f"http://127.0.0.1:{port}/solo/v1", "model": model}


def client_for(url: str) -> OpenAI:
    return OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def ask(url: str, task: str, question: str, **kwargs: Any) -> Any:
    return client_for(url).chat.completions.create(
        model=f"routenlp/{task}", messages=[{"role": "user", "content": question}], temperature=0, **kwargs
    )


def chat_prompt_tokens(model: Path, question: str) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    return len(tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"])


def test_accept_and_escalate_are_decided_on_the_engines_logprobs(apps: dict[str, Any]) -> None:
    question = QUESTIONS[0]
    accepted = ask(apps["cascade"], "chat", question).model_extra["routing"]
    escalated = ask(apps["cascade"], "strict", question).model_extra["routing"]
    assert accepted["answered_by"] == "small" and accepted["attempts"][0]["status"] == "accepted"
    # The same prompt, greedy: the engine gives the same answer and the same logprobs under both tasks, so
    # only the threshold differs. The real mean NLL is neither 0 nor the scripted engine's round numbers.
    uncertainty = accepted["attempts"][0]["uncertainty"]
    assert 0.001 < uncertainty < 50.0
    assert escalated["attempts"][0]["uncertainty"] == pytest.approx(uncertainty, rel=1e-3)
    assert [(a["tier"], a["status"]) for a in escalated["attempts"]] == [("small", "escalated"),
                                                                          ("frontier", "accepted")]
    assert escalated["answered_by"] == "frontier"


def test_token_counts_come_from_the_engine(apps: dict[str, Any]) -> None:
    question = QUESTIONS[1]
    response = ask(apps["cascade"], "chat", question, max_tokens=4)
    attempt = response.model_extra["routing"]["attempts"][0]
    assert attempt["prompt_tokens"] == chat_prompt_tokens(apps["model"], question)
    assert 1 <= attempt["completion_tokens"] <= 4
    assert response.usage.prompt_tokens == attempt["prompt_tokens"]
    assert response.usage.completion_tokens == attempt["completion_tokens"]


def test_the_vllm_tier_streams_live_with_include_usage(apps: dict[str, Any]) -> None:
    question = QUESTIONS[2]
    whole = ask(apps["solo"], "chat", question, max_tokens=MAX_TOKENS)
    chunks = list(ask(apps["solo"], "chat", question, max_tokens=MAX_TOKENS, stream=True,
                      stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, pieces  # token by token, not one buffered answer
    assert "".join(pieces) == whole.choices[0].message.content
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.prompt_tokens == chat_prompt_tokens(apps["model"], question)
    assert usage.usage.completion_tokens == whole.usage.completion_tokens
    routing = usage.model_extra["routing"]
    assert routing["answered_by"] == "small" and routing["attempts"][0]["streamed"] is True


def test_a_long_prompt_keeps_its_last_tokens_instead_of_failing(apps: dict[str, Any]) -> None:
    long_question = "Please read this carefully. " * 400 + QUESTIONS[3]  # ~2,400 tokens, max_model_len 1024
    response = ask(apps["solo"], "chat", long_question, max_tokens=4)
    attempt = response.model_extra["routing"]["attempts"][0]
    assert attempt["status"] == "accepted" and attempt["prompt_tokens"] == 512


def test_a_bad_engine_config_fails_at_load_naming_the_field(apps: dict[str, Any], tmp_path: Path) -> None:
    from deployments.builders import build_routenlp_app

    tier = vllm_tier(apps["model"])
    tier["engine"]["engine_kwargs"]["max_model_lenght"] = 512
    config = parse_config(app_config([tier], ["chat"], tmp_path))
    with pytest.raises(ConfigError, match=r"engine\.engine_kwargs\.max_model_lenght: not an argument"):
        build_routenlp_app(config)
    tier = vllm_tier(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match=r"engine\.model_source .*no-such-model.*: no such folder"):
        build_routenlp_app(parse_config(app_config([tier], ["chat"], tmp_path)))


def llm_replica_pids(app: str) -> list[int]:
    import ray

    pids = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"{app}#tier-small" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace="serve")
            pids.append(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30))
    return pids


def test_sigkilled_vllm_replica_under_load_escalates_with_no_failed_request(apps: dict[str, Any]) -> None:
    """Last in the module: the killed replica restarts in the background, which takes minutes on CPU."""
    pids = llm_replica_pids("cascade")
    assert len(pids) == 1, pids
    answered: list[str] = []
    failures: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def user(index: int) -> None:
        n = index
        while not stop.is_set():
            try:
                response = ask(apps["cascade"], "chat", QUESTIONS[n % len(QUESTIONS)], max_tokens=MAX_TOKENS)
            except openai.OpenAIError as exc:  # no client retries: the router must not drop a query
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                answered.append(response.model_extra["routing"]["answered_by"])
            n += 4

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 120
    while len(answered) < 4 and time.time() < deadline:
        time.sleep(0.2)
    before = len(answered)
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(10)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    assert failures == []
    assert before >= 4 and "small" in answered[:before]
    assert answered[before:].count("frontier") >= 4, answered[before:]
