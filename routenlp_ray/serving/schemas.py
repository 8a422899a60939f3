"""OpenAI-compatible request bodies, validated with clear messages.

Unknown OpenAI parameters are ignored (clients send many) but known ones are type-checked.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


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

    model_config = ConfigDict(extra="forbid")

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
