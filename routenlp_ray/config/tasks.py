"""Tasks: what a query asks for, how its answer is scored, and the quality it must keep."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from routenlp_ray.config._base import StrictModel

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"

MetricName = Literal["entity_f1", "rouge_l", "macro_f1", "accuracy", "bertscore", "exact_match", "none"]


def check_prompt_template(value: str) -> str:
    """A user-message template must hold exactly the ``{input}`` slot and be a valid format string."""
    if "{input}" not in value:
        raise ValueError(f"prompt_template must contain '{{input}}', got {value!r}")
    try:
        value.format(input="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"prompt_template {value!r} is not a valid format string: {exc}") from exc
    return value


class TaskConfig(StrictModel):
    """One task served behind `model="routenlp/<name>"`."""

    name: str = Field(pattern=TASK_NAME_PATTERN, description="Task name; clients pick it via `model`.")
    description: str = Field("", description="Shown in /v1/models.")
    system_prompt: str | None = Field(None, description="System message sent before the user's input.")
    prompt_template: str = Field(
        "{input}", description="User message template; `{input}` is replaced by the client's last user message."
    )
    metric: MetricName = Field("none", description="Quality metric of the task.")
    quality_target: float = Field(
        0.96, gt=0, le=1, description="Share of frontier quality this task must keep (quality retention)."
    )
    success_bar: float = Field(
        1.0, ge=0, le=1, description="Per-example metric value at or above which an answer counts as correct."
    )
    data_path: str | None = Field(None, description="Folder with train/validation JSONL for this task.")

    @field_validator("prompt_template")
    @classmethod
    def _has_input_slot(cls, value: str) -> str:
        return check_prompt_template(value)

    def render_user_message(self, text: str) -> str:
        return self.prompt_template.format(input=text)

    def apply_to_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Template the last user message and put the task's system prompt first."""
        out = list(messages)
        last_user = max(i for i, m in enumerate(out) if m["role"] == "user")
        out[last_user] = {"role": "user", "content": self.render_user_message(out[last_user]["content"])}
        if self.system_prompt:
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out
