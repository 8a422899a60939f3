from __future__ import annotations

import json

import pytest

from routenlp_ray import PayloadTooLargeError, RequestError
from routenlp_ray.serving import ChatCompletionRequest, FeedbackRequest, parse_body


def body(payload) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"", "request body is empty"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (body({"model": "routenlp/chat"}), "'messages' is required"),
        (body({"model": "routenlp/chat", "messages": []}), "'messages'"),
        (body({"model": "routenlp/chat", "messages": [{"role": "wizard", "content": "x"}]}), "messages.0.role"),
        (body({"model": "routenlp/chat", "messages": [{"role": "system", "content": "x"}]}), "role 'user'"),
        (body({"model": "x", "messages": [{"role": "user", "content": "x"}], "n": 3}), "only n=1 is supported"),
        (body({"model": "x", "messages": [{"role": "user", "content": "x"}], "temperature": 9}), "'temperature'"),
        (
            body({"model": "x", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "only text content parts are supported",
        ),
    ],
)
def test_bad_chat_bodies_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_body(raw, ChatCompletionRequest, max_bytes=10_000)
    assert message in err.value.message
    assert err.value.status_code == 400


def test_oversized_body_is_413() -> None:
    with pytest.raises(PayloadTooLargeError, match="limit is 1024 bytes"):
        parse_body(b"x" * 2000, ChatCompletionRequest, max_bytes=1024)


def test_valid_chat_body_keeps_known_fields_and_ignores_unknown_ones() -> None:
    parsed = parse_body(
        body({
            "model": "routenlp/chat",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
            "max_completion_tokens": 7,
            "stop": "END",
            "presence_penalty": 0,  # a no-op value of an unsupported parameter is accepted
            "x_vendor_hint": "unknown names are vendor extensions",
        }),
        ChatCompletionRequest,
        max_bytes=10_000,
    )
    assert parsed.messages[0].text == "hi there"
    assert parsed.requested_max_tokens == 7 and parsed.stop_sequences == ("END",)


def test_feedback_needs_a_signal_and_rejects_unknown_fields() -> None:
    with pytest.raises(RequestError, match="needs 'accepted'"):
        parse_body(body({"response_id": "x"}), FeedbackRequest, max_bytes=10_000)
    with pytest.raises(RequestError, match="rating"):
        parse_body(body({"response_id": "x", "rating": 5}), FeedbackRequest, max_bytes=10_000)
