"""Chaos on real Ray Serve: SIGKILL a router replica and a tier replica under load.

The official ``openai`` client with its default retries must see no failed request, and
the query log must hold every answer a client received. The app uses the defaults that
matter here: two router replicas (``ServerConfig``), tier calls retried once on replica
death (``HandleTierClient``), a cheap tier with two replicas.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from routenlp_ray.telemetry import read_records
from tests.cpu.conftest import deploy_declaratively, wait_for

pytestmark = pytest.mark.slow

APP, PREFIX = "chaos", "/chaos"
CLIENTS = 8
LOAD_S = 24.0
QUESTIONS = [f"chaos question number {i}" for i in range(64)]


def answer_of(question: str) -> str:
    return question.replace("question", "answer")


class CountingTransport(httpx.HTTPTransport):
    """Counts every HTTP attempt the openai client makes, and the ones that failed (5xx or no response)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.attempts = 0
        self.failed_attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.attempts += 1
        try:
            response = super().handle_request(request)
        except Exception:
            with self.lock:
                self.failed_attempts += 1
            raise
        if response.status_code >= 500:
            with self.lock:
                self.failed_attempts += 1
        return response


@pytest.fixture(scope="module")
def app(serve_instance: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("chaos")
    cheap, frontier = tmp / "cheap.jsonl", tmp / "frontier.jsonl"
    cheap.write_text("".join(
        json.dumps({"task": "chat", "input": q, "reference": answer_of(q), "logprobs": [-0.05]}) + "\n" for q in QUESTIONS
    ))
    frontier.write_text("".join(json.dumps({"task": "chat", "input": q, "reference": answer_of(q)}) + "\n" for q in QUESTIONS))
    small = {"num_cpus": 0.1}
    args = {
        "tiers": [
            {"name": "cheap", "engine": {"type": "replay", "records": [str(cheap)], "logprobs_field": "logprobs"},
             "pricing": {"input_per_1m": 0.1, "output_per_1m": 0.1}, "resources": small,
             "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
            {"name": "frontier", "engine": {"type": "replay", "records": [str(frontier)]},
             "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}, "resources": small},
        ],
        "tasks": [{"name": "chat", "metric": "none"}],
        "cascade": {"default_threshold": 1.0},
        "storage": {"log_uri": str(tmp / "log"), "spool_dir": str(tmp / "spool")},
        # The router keeps its default autoscaling: two replicas is what this test is about.
        "server": {"default_task": "chat", "resources": small},
    }
    deploy_declaratively([{"name": APP, "route_prefix": PREFIX, "import_path": "deployments.builders:build_app",
                           "args": args}])
    base = f"http://127.0.0.1:{serve_instance}{PREFIX}"
    wait_for(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, timeout_s=120)
    yield {"base": base, "log": str(tmp / "log")}


def replica_pids(deployment: str) -> list[int]:
    """The pids of a deployment's live replica actors."""
    import ray

    pids = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"{APP}#{deployment}#" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace="serve")
            try:
                pids.append(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10))
            except Exception:  # a replica that is already going away
                continue
    return pids


def test_sigkilled_router_and_tier_replicas_are_invisible_to_a_retrying_client(app: dict[str, Any]) -> None:
    routers, tiers = replica_pids("router"), replica_pids("tier-cheap")
    assert len(routers) == 2 and len(tiers) == 2, (routers, tiers)
    transport = CountingTransport()
    # The official client with its default retries (2, with backoff): what a user of the API runs.
    client = openai.OpenAI(base_url=f"{app['base']}/v1", api_key="unused", http_client=httpx.Client(transport=transport))
    received: dict[str, str] = {}
    failures: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def user(index: int) -> None:
        n = index
        while not stop.is_set():
            question = QUESTIONS[n % len(QUESTIONS)]
            n += CLIENTS
            try:
                response = client.chat.completions.create(model="routenlp/chat", max_tokens=8,
                                                          messages=[{"role": "user", "content": question}])
            except openai.OpenAIError as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            assert response.choices[0].message.content == answer_of(question)
            with lock:
                received[response.id] = question

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(CLIENTS)]
    started = time.time()
    for thread in threads:
        thread.start()
    time.sleep(LOAD_S / 4)
    os.kill(routers[0], signal.SIGKILL)
    killed_router_at = len(received)
    time.sleep(LOAD_S / 4)
    os.kill(tiers[0], signal.SIGKILL)
    killed_tier_at = len(received)
    time.sleep(LOAD_S / 2)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.time() - started

    assert not failures, f"{len(failures)} requests failed: {failures[:3]}"
    # Traffic kept flowing after each kill, not only before it.
    assert killed_router_at < killed_tier_at < len(received), (killed_router_at, killed_tier_at, len(received))
    print(f"{len(received)} answers in {elapsed:.1f}s; {transport.attempts} HTTP attempts, "
          f"{transport.failed_attempts} failed and retried by the client")

    logged = {r["id"]: r for r in read_records(app["log"], "queries")}
    missing = sorted(set(received) - set(logged))
    assert not missing, f"{len(missing)} answers the clients received are not in the query log: {missing[:3]}"
    # An attempt that failed before its 200 reached the client is no answer: at most the attempts
    # that failed can have left a record no client received (a replica killed between its fsync
    # and its response), and none of those may claim another tier than the one that answered.
    unseen = [r for rid, r in logged.items() if rid not in received]
    assert len(unseen) <= transport.failed_attempts, (len(unseen), transport.failed_attempts)
    for record in logged.values():
        assert record["status"] != "failed", record
    # Serve replaced both killed replicas.
    wait_for(lambda: len(replica_pids("router")) == 2 and len(replica_pids("tier-cheap")) == 2, timeout_s=120)
    assert routers[0] not in replica_pids("router") and tiers[0] not in replica_pids("tier-cheap")
