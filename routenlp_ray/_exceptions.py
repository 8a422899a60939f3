"""The one exception tree of routenlp-ray.

::

    RouteNLPError
    ├── ConfigError              a config file or field is invalid (raised at load time)
    ├── RequestError             a client request is malformed; carries an HTTP status
    │   ├── AuthenticationError  missing or wrong API key (401)
    │   ├── UnknownTaskError     the task named by `model` / `task` is not configured (404)
    │   ├── UnknownResponseError feedback names a response this service never served (404)
    │   ├── DuplicateFeedbackError feedback from this source on this response was recorded already (409)
    │   └── PayloadTooLargeError the request body or input is over the configured limit (413)
    ├── EngineError              a tier's engine failed to produce an answer
    │   ├── TierTimeoutError     the tier did not answer within its timeout
    │   ├── ReplayMissError      the replay engine has no recorded answer for the input
    │   └── StreamInterruptedError a tier failed after its answer had begun streaming to the client
    ├── AllTiersFailedError      every tier of the cascade failed; nothing can be returned
    ├── ArtifactError            a threshold or router artifact cannot be read or is invalid
    ├── MissingExtraError        an optional extra (for example `vllm`) is not installed
    └── NotFittedError           an estimator is used before `fit`
"""

from __future__ import annotations


class RouteNLPError(Exception):
    """Root of every error raised by routenlp-ray."""


class ConfigError(RouteNLPError, ValueError):
    """A configuration file or field is invalid."""


class RequestError(RouteNLPError):
    """A client request cannot be served as sent. ``status_code`` is the HTTP status.

    ``error_type`` and ``code`` are the OpenAI error body's ``type`` and ``code``, so clients that
    branch on them (``model_not_found``, ``invalid_api_key``) behave as they do against OpenAI.
    """

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AuthenticationError(RequestError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class UnknownTaskError(RequestError):
    status_code = 404
    code = "model_not_found"


class UnknownResponseError(RequestError):
    status_code = 404
    code = "response_not_found"


class DuplicateFeedbackError(RequestError):
    status_code = 409
    code = "duplicate_feedback"


class PayloadTooLargeError(RequestError):
    status_code = 413
    code = "request_too_large"


class EngineError(RouteNLPError):
    """A tier's engine failed to produce an answer."""


class TierTimeoutError(EngineError, TimeoutError):
    """A tier did not answer within its timeout."""


class ReplayMissError(EngineError, LookupError):
    """The replay engine holds no recorded answer for this input."""


class StreamInterruptedError(EngineError):
    """A tier failed after part of its answer had been streamed: too late to fall back."""


class AllTiersFailedError(RouteNLPError):
    """Every tier failed, so the cascade has no answer to return."""


class ArtifactError(RouteNLPError):
    """A versioned artifact (thresholds, router) cannot be read or is invalid."""


class MissingExtraError(RouteNLPError, ImportError):
    """An optional dependency group is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install the {extra!r} extra: "
            f"pip install 'routenlp-ray[{extra}]'"
        )


class NotFittedError(RouteNLPError, ValueError):
    """An estimator was used before it was fitted."""
