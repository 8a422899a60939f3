"""Hostile HTTP requests for the router, generated from a seed (no network, no extra dependency).

Each case is a method, a path and raw body bytes: valid requests bent by one to three
mutations (a field set to a hostile value, removed, or nested deep; the bytes truncated,
mangled or padded), wrong methods and unknown paths. The fuzz tests send them in-process and
through real Serve, and assert that none gets a 5xx and the service stays healthy.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/models")
FIELDS = {
    "/v1/chat/completions": ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                             "stop", "n", "stream", "task", "user", "tools", "logprobs", "response_format", "seed"],
    "/v1/completions": ["model", "prompt", "max_tokens", "temperature", "top_p", "stop", "n", "stream", "echo",
                        "best_of", "suffix", "logprobs"],
    "/v1/feedback": ["response_id", "accepted", "score", "comment", "source"],
    "/v1/models": [],
}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: bytes

    def describe(self) -> str:
        return f"{self.method} {self.path} {self.body[:120]!r}"


def hostile_values(rng: random.Random) -> Any:
    depth = rng.choice([5, 40, 300])
    choices: list[Any] = [
        None, True, False, 0, -1, 1.5, -1e308, 10**40, "", " ", "yes", "true", "null",
        "x" * rng.choice([10, 5_000, 120_000]), "\ud800", "a\udfffb", "\x00\x01", "😀" * 50, "\u202e\u200b",
        [], {}, [None], [{}], {"type": "text"}, ["a"] * 10, list(range(2_000)),
        _nested(depth, rng.choice(["list", "dict"])), {"role": "user", "content": _nested(depth, "list")},
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
        [{"role": "user", "content": [{"type": "text", "text": None}]}], [{"role": "tool"}],
        [{"role": "user", "content": "hi", "name": 5}], "routenlp/../../etc/passwd", "routenlp/",
    ]
    return rng.choice(choices)


def _nested(depth: int, kind: str) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def valid_body(path: str, rng: random.Random, response_ids: list[str]) -> dict[str, Any]:
    if path == "/v1/chat/completions":
        return {"model": rng.choice(["routenlp/cs_intent", "routenlp/chat", "routenlp"]),
                "messages": [{"role": "user", "content": rng.choice(["where is my new card?", "hello"])}]}
    if path == "/v1/completions":
        return {"model": "routenlp/cs_intent", "prompt": "where is my new card?"}
    if path == "/v1/feedback":
        return {"response_id": rng.choice(response_ids or ["chatcmpl-none"]), "accepted": rng.random() < 0.5}
    return {}


def mutate(path: str, body: dict[str, Any], rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        fields = FIELDS[path] + ["x_unknown", "__proto__", "constructor"]
        if roll < 0.45:
            body[rng.choice(fields)] = hostile_values(rng)
        elif roll < 0.55 and body:
            body.pop(rng.choice(list(body)))
        elif roll < 0.65 and path == "/v1/chat/completions":
            body["messages"] = [{"role": rng.choice(["user", "system", "wizard", None, 3]),
                                 "content": hostile_values(rng)} for _ in range(rng.randint(1, 3))]
        elif roll < 0.75:
            body = {"wrapped": body} if rng.random() < 0.5 else body  # type: ignore[assignment]
        else:
            return _mangle(json.dumps(body, ensure_ascii=rng.random() < 0.7, allow_nan=True), rng)
    try:
        return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    except (ValueError, RecursionError):
        return b"{"


def _mangle(text: str, rng: random.Random) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    roll = rng.random()
    if roll < 0.2:
        return raw[: rng.randint(0, max(0, len(raw) - 1))]  # truncated
    if roll < 0.35:
        cut = rng.randint(0, len(raw))
        return raw[:cut] + rng.choice([b"\xff\xfe", b"\xc3", b"\x00", b"\xed\xa0\x80"]) + raw[cut:]  # bad UTF-8
    if roll < 0.45:
        return b"\xef\xbb\xbf" + raw  # a byte-order mark
    if roll < 0.55:
        return rng.choice([b"[" * 100_000, b"{\"a\":" * 50_000, b"NaN", b"Infinity", b"-1e999", b"\"str\"", b"null"])
    if roll < 0.65:
        return raw.replace(b"}", b", \"max_tokens\": 1e999}", 1)
    if roll < 0.7:
        return raw + b" trailing"
    if roll < 0.75:
        return raw + b" " * 1_100_000  # over the default 1 MB body limit
    if roll < 0.85:
        return raw.replace(b"{", b"{\"model\": 1, \"model\": \"routenlp/chat\", ", 1)  # duplicate keys
    return raw * rng.randint(2, 3)


def generate(count: int, seed: int = 13, response_ids: list[str] | None = None) -> list[Case]:
    """``count`` hostile cases across the endpoints, the same ones for the same seed."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for i in range(count):
        path = ENDPOINTS[i % len(ENDPOINTS)]
        roll = rng.random()
        if roll < 0.08:
            method = rng.choice(["GET", "PUT", "DELETE", "PATCH"]) if path != "/v1/models" else "POST"
            cases.append(Case(method, path, b"{}"))
        elif roll < 0.14:
            junk = rng.choice(["/v1/responses", "/v1/embeddings", "/v1/chat", "/%2e%2e/etc/passwd", "/v1/models/x/y",
                               "/healthz/../v1/models", "/" + "a" * 3000])
            cases.append(Case(rng.choice(["GET", "POST"]), junk, b"{}"))
        elif path == "/v1/models":
            cases.append(Case("GET", path + rng.choice(["", "?limit=-1", "?x=\u00ff", "/"]), b""))
        else:
            cases.append(Case("POST", path, mutate(path, valid_body(path, rng, response_ids or []), rng)))
    return cases
