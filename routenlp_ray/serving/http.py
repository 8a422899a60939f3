"""Turn raw HTTP bodies into validated requests, or into RequestErrors that name the problem."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from routenlp_ray._exceptions import PayloadTooLargeError, RequestError

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
