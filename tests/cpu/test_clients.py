"""The clients people use (openai, langchain-openai, litellm) against the embedded default on real Ray Serve.

Every test checks that the answering tier and the cost reach the client's user. The snippets of
docs/clients.md, and the first request of docs/quickstart.md (also on the README), are run as written
(only the base URL is swapped), so they cannot drift from what works.
One module, one Serve instance: the embedded default, plus a one-tier app whose only (so last)
tier is SmolLM2, to watch the last tier stream live.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from routenlp_ray.telemetry import read_records
from tests.conftest import REPO_ROOT, tier_named
from tests.cpu.conftest import deploy_declaratively, wait_for
from tests.cpu.test_serve_embedded import APP, embedded_config

# LiteLLM fetches a remote price map at import unless told not to: these tests touch no network.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

pytestmark = pytest.mark.slow

LAST_TIER_APP = "last-tier"
DOCS_URL = "http://127.0.0.1:8000/v1"
TIERS = {"specialist", "smollm2", "frontier"}


def smollm2_only(data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The embedded default cut down to its SmolLM2 tier and free chat: SmolLM2 is the last tier."""
    config = copy.deepcopy(data)
    smollm2 = tier_named(config, "smollm2")
    smollm2["tasks"] = None  # the last tier answers every task
    config["tiers"] = [smollm2]
    config["tasks"] = [t for t in config["tasks"] if t["name"] == "chat"]
    config["cascade"] = {"alpha": 0.1, "uncertainty": "mean_nll", "default_threshold": 1.0}
    config["monitoring"] = {"enabled": False}
    config["storage"] = {"log_uri": str(tmp_path / "last-log"), "spool_dir": str(tmp_path / "last-spool")}
    return config


@pytest.fixture(scope="module")
def apps(serve_instance: int, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("clients")
    data = embedded_config(tmp_path, data_dir)
    last = smollm2_only(data, tmp_path)
    deploy_declaratively([
        {"name": APP, "route_prefix": "/", "import_path": "deployments.builders:build_app", "args": data},
        {"name": LAST_TIER_APP, "route_prefix": "/last", "import_path": "deployments.builders:build_app", "args": last},
    ])
    port = serve_instance
    yield {"base_url": f"http://127.0.0.1:{port}/v1", "last_url": f"http://127.0.0.1:{port}/last/v1",
           "log": data["storage"]["log_uri"], "last_log": last["storage"]["log_uri"]}


def run_snippet(code: str, base_url: str, name: str) -> dict[str, Any]:
    """Run a documented snippet against ``base_url`` instead of the docs' URL; returns its variables."""
    assert DOCS_URL in code, f"{name} does not use {DOCS_URL}"
    namespace: dict[str, Any] = {}
    exec(compile(code.replace(DOCS_URL, base_url), name, "exec"), namespace)
    return namespace


def docs_snippet(client: str, base_url: str) -> dict[str, Any]:
    """Run docs/clients.md's ``# client: <client>`` snippet against ``base_url``; returns its variables."""
    page = (REPO_ROOT / "docs" / "clients.md").read_text()
    match = re.search(rf"```python\n# client: {client}\n(.*?)```", page, re.S)
    assert match, f"docs/clients.md has no '# client: {client}' snippet"
    return run_snippet(match.group(1), base_url, f"docs/clients.md:{client}")


def frontier_answered_input(base_url: str, data_dir: Path) -> str:
    """A cs_intent validation query the specialist escalates, so the last tier (the frontier) answers it."""
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    with (data_dir / "cs_intent" / "validation.jsonl").open() as handle:
        for line in list(handle)[:100]:
            text = json.loads(line)["input"]
            response = client.chat.completions.create(model="routenlp/cs_intent",
                                                      messages=[{"role": "user", "content": text}])
            if response.model_extra["routing"]["answered_by"] == "frontier":
                return text
    raise AssertionError("the specialist accepted all of the first 100 cs_intent validation queries")


def test_quickstart_first_request_prints_the_answer_and_its_routing(apps: dict[str, Any]) -> None:
    page = (REPO_ROOT / "docs" / "quickstart.md").read_text()
    match = re.search(r"## Use it\n.*?```python\n(.*?)```", page, re.S)
    assert match, "docs/quickstart.md has no python example under '## Use it'"
    ns = run_snippet(match.group(1), apps["base_url"], "docs/quickstart.md:use-it")
    routing = ns["response"].model_extra["routing"]
    assert ns["response"].choices[0].message.content
    assert routing["answered_by"] in TIERS and routing["task"] == "cs_intent"


def test_openai_docs_snippet_headers_body_stream_and_models_retrieve(apps: dict[str, Any]) -> None:
    ns = docs_snippet("openai", apps["base_url"])
    body_routing = ns["response"].model_extra["routing"]
    assert ns["tier"] == body_routing["answered_by"] and ns["tier"] in TIERS
    assert ns["cost_usd"] == pytest.approx(body_routing["cost_usd"]) and ns["cost_usd"] > 0
    assert ns["raw"].headers["x-routenlp-response-id"] == ns["response"].id.strip()
    assert ns["response"].system_fingerprint.startswith("routenlp:thresholds=")
    # Serve's own request id (echoed as x-request-id) is the trace id in the headers and the body.
    assert ns["raw"].headers["x-routenlp-request-id"] == ns["raw"].headers["x-request-id"] == body_routing["trace_id"]
    final, routing = ns["final"], ns["routing"]
    assert final.id.startswith("chatcmpl-") and final.usage.total_tokens > 0
    assert routing["answered_by"] in TIERS and routing["cost_usd"] > 0
    if routing["answered_by"] != "frontier":  # a buffered answer: get_final_completion keeps its routing
        assert final.model_extra["routing"] == routing
    assert ns["model"].id == "routenlp/cs_intent" and ns["model"].owned_by == "routenlp"


def test_client_request_id_is_the_trace_id_in_routing_and_in_the_query_log(apps: dict[str, Any]) -> None:
    client = OpenAI(base_url=apps["base_url"], api_key="unused", max_retries=0, timeout=60)
    trace = f"trace-{uuid.uuid4().hex}"
    response = client.chat.completions.create(
        model="routenlp/cs_intent", messages=[{"role": "user", "content": "where is my new card?"}],
        extra_headers={"x-request-id": trace},
    )
    assert response.model_extra["routing"]["trace_id"] == trace
    logged = {r["id"]: r for r in read_records(apps["log"], "queries")}
    assert logged[response.id]["trace_id"] == trace
    client.post("/feedback", body={"response_id": response.id, "accepted": True}, cast_to=object,
                options={"headers": {"x-request-id": trace + "-fb"}})
    assert any(r["trace_id"] == trace + "-fb" for r in read_records(apps["log"], "feedback"))


def test_langchain_docs_snippet_invoke_and_stream_keep_tier_cost_and_response_id(apps: dict[str, Any]) -> None:
    ns = docs_snippet("langchain", apps["base_url"])
    assert ns["message"].content and ns["tier"] in TIERS and ns["cost_usd"] > 0
    assert ns["response_id"].startswith("chatcmpl-")
    stream_headers = ns["stream_headers"]
    assert ns["stream_tier"] == ns["tier"]  # the same query, the same cascade
    assert stream_headers["x-routenlp-response-id"].startswith("chatcmpl-")
    if stream_headers["x-routenlp-streaming"] == "buffered":
        assert float(stream_headers["x-routenlp-cost-usd"]) > 0
    assert "".join(c.content for c in ns["chunks"]) == ns["message"].content


def test_litellm_docs_snippet_completion_and_stream_chunk_builder(apps: dict[str, Any]) -> None:
    ns = docs_snippet("litellm", apps["base_url"])
    assert ns["tier"] in TIERS and ns["cost_usd"] > 0
    assert ns["response"].id == ns["headers"]["llm_provider-x-routenlp-response-id"]
    rebuilt, routing = ns["rebuilt"], ns["routing"]
    assert rebuilt.id.startswith("chatcmpl-") and rebuilt.usage.total_tokens > 0
    assert ns["stream_headers"]["llm_provider-x-routenlp-answered-by"] == routing["answered_by"] == ns["tier"]
    assert routing["cost_usd"] > 0


def test_litellm_acompletion_keeps_the_headers(apps: dict[str, Any]) -> None:
    import litellm

    response = asyncio.run(litellm.acompletion(
        model="openai/routenlp/legal_risk", api_base=apps["base_url"], api_key="unused",
        messages=[{"role": "user", "content": "We may terminate your account at any time without notice."}],
    ))
    headers = response._hidden_params["additional_headers"]
    assert headers["llm_provider-x-routenlp-task"] == "legal_risk"
    assert headers["llm_provider-x-routenlp-answered-by"] in TIERS
    assert float(headers["llm_provider-x-routenlp-cost-usd"]) > 0


def test_a_query_escalated_to_the_frontier_streams_live_to_every_client(apps: dict[str, Any], data_dir: Path) -> None:
    import litellm
    from langchain_openai import ChatOpenAI

    text = frontier_answered_input(apps["base_url"], data_dir)
    messages = [{"role": "user", "content": text}]
    client = OpenAI(base_url=apps["base_url"], api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="routenlp/cs_intent", messages=messages, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-routenlp-streaming"] == "live" and raw.headers["x-routenlp-answered-by"] == "frontier"
    chunks = list(raw.parse())
    assert chunks[0].id == raw.headers["x-routenlp-response-id"] and chunks[0].id.startswith("chatcmpl-")
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 1 and chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    routing = chunks[-1].model_extra["routing"]
    assert routing["answered_by"] == "frontier" and routing["attempts"][-1]["streamed"] is True
    assert routing["cost_usd"] > 0 and routing["escalations"] == int(raw.headers["x-routenlp-escalations"])

    llm = ChatOpenAI(base_url=apps["base_url"], api_key="unused", model="routenlp/cs_intent",
                     include_response_headers=True)
    lc_chunks = list(llm.stream(text))
    assert lc_chunks[0].response_metadata["headers"]["x-routenlp-answered-by"] == "frontier"

    lite = list(litellm.completion(model="openai/routenlp/cs_intent", api_base=apps["base_url"], api_key="unused",
                                   messages=messages, stream=True))
    lite_routing = next(c.routing for c in lite if getattr(c, "routing", None))
    assert lite_routing["answered_by"] == "frontier" and lite_routing["cost_usd"] > 0


def test_the_last_tier_delivers_its_first_chunk_before_its_answer_is_complete(apps: dict[str, Any]) -> None:
    client = OpenAI(base_url=apps["last_url"], api_key="unused", max_retries=0, timeout=120)
    trace = f"live-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="routenlp/chat", messages=[{"role": "user", "content": "Count from one to twenty in words."}],
        max_tokens=48, stream=True, extra_headers={"x-request-id": trace},
    )
    assert raw.headers["x-routenlp-streaming"] == "live" and raw.headers["x-routenlp-answered-by"] == "smollm2"
    chunks = iter(raw.parse())
    first = next(chunks)
    # The router logs a decision once the answer is complete; at the first chunk it has not.
    logged_at_first_chunk = [r for r in read_records(apps["last_log"], "queries") if r["trace_id"] == trace]
    rest = list(chunks)
    wait_for(lambda: any(r["trace_id"] == trace for r in read_records(apps["last_log"], "queries")), timeout_s=60)
    assert first.choices[0].delta.content and logged_at_first_chunk == []
    text = first.choices[0].delta.content + "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    routing = rest[-1].model_extra["routing"]
    assert routing["answered_by"] == "smollm2" and routing["attempts"][-1]["streamed"] is True
    assert routing["cost_usd"] > 0 and len(rest) > 2
    [record] = [r for r in read_records(apps["last_log"], "queries") if r["trace_id"] == trace]
    assert record["answer"] == text and record["id"] == first.id
