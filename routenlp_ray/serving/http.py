"""Turn raw HTTP bodies into validated requests, or into RequestErrors that name the problem; auth and size limits."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from routenlp_ray._exceptions import AuthenticationError, PayloadTooLargeError, RequestError
from routenlp_ray.config.server import ServerConfig

Model = TypeVar("Model", bound=BaseModel)


def parse_body(raw: bytes, schema: type[Model], max_bytes: int) -> Model:
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"request body is {len(raw)} bytes; the limit is {max_bytes} bytes")
    if not raw.strip():
        raise RequestError("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc), param=_first_param(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "missing":
            problems.append(f"'{loc}' is required")
        else:
            problems.append(f"'{loc}': {message} (got {err.get('input')!r:.200})")
    return "invalid request: " + "; ".join(problems)


def _first_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None


class RequestGate:
    """Who may call and how large a request may be: the server config's API keys and size limits.

    The one place these are checked; the ingress asks it before parsing, the service for the
    input text's length once the body is parsed.
    """

    def __init__(self, server: ServerConfig) -> None:
        self.max_request_bytes = server.max_request_bytes
        self.max_input_chars = server.max_input_chars
        self._api_keys = server.resolved_api_keys()

    def authenticate(self, authorization: str | None) -> None:
        if not self._api_keys:
            return
        if not authorization:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self._api_keys:
            raise AuthenticationError("invalid API key")

    def check_declared_length(self, content_length: str | None) -> None:
        """Refuse a body whose ``Content-Length`` is over the limit before reading it."""
        if content_length and content_length.isdigit() and int(content_length) > self.max_request_bytes:
            raise PayloadTooLargeError(
                f"request body is {content_length} bytes; the limit is {self.max_request_bytes} bytes"
            )

    def parse(self, raw: bytes, schema: type[Model]) -> Model:
        return parse_body(raw, schema, self.max_request_bytes)

    def check_input_chars(self, text_length: int) -> None:
        if text_length > self.max_input_chars:
            raise PayloadTooLargeError(
                f"input is {text_length} characters; the limit is {self.max_input_chars}", param="messages"
            )
