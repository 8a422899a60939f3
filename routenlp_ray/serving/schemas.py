"""OpenAI-compatible request bodies, validated with clear messages.

Known parameters are type-checked strictly (JSON ``true`` is not a number, ``"yes"`` is not a
boolean). OpenAI parameters this router cannot honour (tools, logprobs, response formats,
penalties ...) are refused by name when set to anything but their no-op value; names that are
not OpenAI parameters at all are ignored, as vendor extensions are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from routenlp_ray._exceptions import RequestError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _unset(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {}


def _text_format(value: Any) -> bool:
    return value is None or value == {"type": "text"}


def _no_tool_choice(value: Any) -> bool:
    return value is None or value == "none"


def _text_modalities(value: Any) -> bool:
    return value is None or value == ["text"]


# OpenAI parameter -> (is this value a no-op?, why it cannot be honoured).
_REFUSED_PARAMS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_unset, "tool calling is not supported"),
    "tool_choice": (_no_tool_choice, "tool calling is not supported"),
    "functions": (_unset, "function calling is not supported"),
    "function_call": (_no_tool_choice, "function calling is not supported"),
    "logprobs": (_unset, "log-probabilities are not returned (tiers answer through a cascade)"),
    "top_logprobs": (_unset, "log-probabilities are not returned (tiers answer through a cascade)"),
    "response_format": (_text_format, "only plain text responses are supported"),
    "logit_bias": (_unset, "logit bias is not supported"),
    "presence_penalty": (_unset, "sampling penalties are not supported"),
    "frequency_penalty": (_unset, "sampling penalties are not supported"),
    "audio": (_unset, "audio output is not supported"),
    "modalities": (_text_modalities, "only text output is supported"),
    "prediction": (_unset, "predicted outputs are not supported"),
    "reasoning_effort": (_unset, "reasoning effort is not supported"),
    "web_search_options": (_unset, "web search is not supported"),
    "best_of": (lambda v: v is None or v == 1, "best_of is not supported; only one candidate is generated"),
    "echo": (_unset, "echo is not supported"),
    "suffix": (lambda v: v is None or v == "", "suffix (insertion) is not supported"),
}


def refuse_unsupported(data: Any) -> None:
    """Refuse, by name, an OpenAI parameter set to something this router would otherwise drop."""
    if not isinstance(data, dict):
        return
    for name, (is_noop, reason) in _REFUSED_PARAMS.items():
        if name in data and not is_noop(data[name]):
            raise RequestError(f"unsupported parameter '{name}': {reason}; remove it or leave it unset", param=name)
    seed, temperature = data.get("seed"), data.get("temperature", 0)
    # Greedy decoding is reproducible with or without a seed; sampling through a cascade is not.
    if seed is not None and temperature not in (0, 0.0, None):
        raise RequestError(
            "unsupported parameter 'seed': seeded sampling is not supported across tiers; "
            "use temperature 0 for reproducible answers",
            param="seed",
        )


class ContentPart(_Lenient):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> "ContentPart":
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are supported, got type {self.type!r}")
        return self


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingParams(_Lenient):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        refuse_unsupported(data)  # a RequestError passes through pydantic untouched
        return data

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    task: str | None = Field(None, description="Explicit task; overrides the one named by `model`.")

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(value)}")
        return value

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"only n=1 is supported, got {value}")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _needs_user_message(self) -> "ChatCompletionRequest":
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages must contain at least one message with role 'user'")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingParams):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"exactly one prompt is supported, got a list of {len(value)}")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class FeedbackRequest(BaseModel):
    """Feedback on one earlier response: accept/reject, a quality score, or both."""

    model_config = ConfigDict(extra="forbid", strict=True)

    response_id: str = Field(min_length=1, max_length=200)
    accepted: bool | None = None
    score: float | None = Field(None, ge=0, le=1)
    comment: str | None = Field(None, max_length=4000)
    source: Literal["user", "audit", "label"] = "user"

    @model_validator(mode="after")
    def _has_signal(self) -> "FeedbackRequest":
        if self.accepted is None and self.score is None:
            raise ValueError("feedback needs 'accepted' (true/false) or 'score' (0..1)")
        return self


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope, so official clients surface ``message``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
