"""Turn raw HTTP bodies into validated requests, or into RequestErrors that name the problem; auth and size limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from routenlp_ray._exceptions import AuthenticationError, ConfigError, PayloadTooLargeError, RequestError
from routenlp_ray.config.server import ServerConfig

Model = TypeVar("Model", bound=BaseModel)

# No OpenAI request nests deeper than a content part inside a message inside a list (depth 4);
# the margin is for tool-shaped extras. Far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 32


def parse_body(raw: bytes, schema: type[Model], max_bytes: int) -> Model:
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"request body is {len(raw)} bytes; the limit is {max_bytes} bytes")
    if not raw.strip():
        raise RequestError("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object, got {type(data).__name__}")
    check_json_values(data)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc), param=_first_param(exc)) from None


def check_json_values(data: Any) -> None:
    """Refuse what JSON can carry but the service cannot handle: deep nesting and unpaired surrogates.

    ``json.loads`` accepts ``"\\ud800"``, but such a string cannot be encoded as UTF-8, so it would
    fail later in a tokenizer or the query log instead of here, at the client's door.
    Iterative, so a deep body cannot exhaust the stack while it is being checked.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(f"'{path or 'body'}' nests JSON deeper than {MAX_JSON_DEPTH} levels", param=path or None)
        if isinstance(value, str):
            _check_utf8(value, path)
        elif isinstance(value, float) and not math.isfinite(value):
            # 1e999 parses as infinity, which the query log (strict JSON) could not write.
            raise RequestError(f"'{path or 'body'}' is not a finite number", param=path or None)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_utf8(key, path or "body")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))


def _refuse_constant(name: str) -> Any:
    raise RequestError(f"request body is not valid JSON: {name} is not a JSON number")


def _check_utf8(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise RequestError(
            f"'{path}' holds an unpaired UTF-16 surrogate ({bad}) at character {exc.start}; text must be valid Unicode",
            param=path or None,
        ) from None


async def read_body(chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``max_bytes``.

    A chunked upload declares no length, so counting as it arrives is the only way not to
    read all of it before refusing it.
    """
    received = bytearray()
    async for chunk in chunks:
        received += chunk
        if len(received) > max_bytes:
            raise PayloadTooLargeError(
                f"request body is over {max_bytes} bytes (refused after {len(received)}); "
                f"the limit is {max_bytes} bytes"
            )
    return bytes(received)


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

    The one place these are checked; the ingress asks it for every path but liveness before
    anything else, the service for the input text's length once the body is parsed. Keys are
    kept only as SHA-256 digests and compared in constant time.
    """

    def __init__(self, server: ServerConfig) -> None:
        self.max_request_bytes = server.max_request_bytes
        self.max_input_chars = server.max_input_chars
        self._key_digests = load_key_digests(server)

    @property
    def requires_key(self) -> bool:
        return bool(self._key_digests)

    def authenticate(self, authorization: str | None) -> None:
        if not self._key_digests:
            return
        if not authorization:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self._known(token.strip()):
            raise AuthenticationError("invalid API key")

    def is_authorized(self, authorization: str | None) -> bool:
        try:
            self.authenticate(authorization)
        except AuthenticationError:
            return False
        return True

    def _known(self, token: str) -> bool:
        digest = _digest(token)
        # Every stored digest is compared, so the time taken says nothing about which key was close.
        found = False
        for known in self._key_digests:
            found |= hmac.compare_digest(digest, known)
        return found

    def check_declared_length(self, content_length: str | None) -> None:
        """Refuse a body whose ``Content-Length`` is over the limit before reading it."""
        if content_length and content_length.isdigit() and int(content_length) > self.max_request_bytes:
            raise PayloadTooLargeError(
                f"request body is {content_length} bytes; the limit is {self.max_request_bytes} bytes"
            )

    async def read(self, chunks: AsyncIterable[bytes]) -> bytes:
        return await read_body(chunks, self.max_request_bytes)

    def parse(self, raw: bytes, schema: type[Model]) -> Model:
        return parse_body(raw, schema, self.max_request_bytes)

    def check_input_chars(self, text_length: int) -> None:
        if text_length > self.max_input_chars:
            raise PayloadTooLargeError(
                f"input is {text_length} characters; the limit is {self.max_input_chars}", param="messages"
            )


def load_key_digests(server: ServerConfig) -> tuple[bytes, ...]:
    """SHA-256 digests of the keys in ``server.api_keys_env`` and ``server.api_keys_file``.

    Read where the gate lives (the router replica), so keys never travel in Serve's args.
    """
    keys: set[str] = set()
    if server.api_keys_env and os.environ.get(server.api_keys_env):
        keys.update(k.strip() for k in os.environ[server.api_keys_env].split(",") if k.strip())
    if server.api_keys_file:
        path = Path(server.api_keys_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"server.api_keys_file: cannot read {str(path)!r}: {exc.strerror or type(exc).__name__}"
            ) from None
        from_file = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
        if not from_file:
            # An empty key file would silently turn auth off.
            raise ConfigError(f"server.api_keys_file: {str(path)!r} holds no keys")
        keys.update(from_file)
    return tuple(sorted(_digest(k) for k in keys))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
