"""The conformal cascade: uncertainty score, thresholds and start-tier policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from routenlp_ray.config._base import StrictModel

UncertaintyName = Literal["mean_nll", "max_nll", "one_minus_min_prob", "topk_entropy", "learned"]


class CascadeConfig(StrictModel):
    """How the router decides to accept an answer or escalate."""

    alpha: float = Field(0.1, gt=0, lt=1, description="Target miscoverage of split-conformal thresholds.")
    uncertainty: UncertaintyName = Field("mean_nll", description="Default uncertainty score u(m_k, x).")
    uncertainty_per_task: dict[str, UncertaintyName] = Field(
        default_factory=dict, description="Per-task override of the uncertainty score."
    )
    answer_scorer_path: str | None = Field(
        None, description="Learned answer scorer (`routenlp fit-scorer`), used where the score is 'learned'."
    )
    thresholds_path: str | None = Field(
        None, description="Versioned threshold artifact (JSON) written by `routenlp calibrate`."
    )
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Inline thresholds, tier -> task -> delta; override the artifact."
    )
    default_threshold: float | None = Field(
        None,
        description=(
            "Threshold for a (tier, task) with no calibrated value. None means such a tier never accepts "
            "and always escalates (except the last tier, which always accepts)."
        ),
    )
    start_policy: str = Field(
        "cheapest",
        pattern=r"^(cheapest|router|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description=(
            "'cheapest'; 'router', the learned difficulty-aware router saved at router_path; or "
            "'<module>:<factory>', a callable building a policy from router_path."
        ),
    )
    router_path: str | None = Field(None, description="Artifact handed to the start-policy factory.")
    fallback_tier: str | None = Field(
        None,
        description=(
            "Tier asked, with the task's prompt, when every tier that serves the query's task failed (errored, "
            "timed out, or a replay tier had no record of the input) and no answer at all came back. Its answer "
            "is returned unconditionally, even for a task outside its `tasks`, and marked `fallback` (it met no "
            "quality bar and saves nothing). A cheaper tier than the last, not a specialist. None: such a query "
            "is a 503."
        ),
    )

    @model_validator(mode="after")
    def _learned_needs_artifact(self) -> "CascadeConfig":
        users = [t for t, name in self.uncertainty_per_task.items() if name == "learned"]
        if self.uncertainty == "learned":
            users.insert(0, "uncertainty")
        if users and not self.answer_scorer_path:
            raise ValueError(
                f"answer_scorer_path is required: the 'learned' uncertainty score is used by {users}"
            )
        return self

    def uncertainty_for(self, task: str) -> UncertaintyName:
        return self.uncertainty_per_task.get(task, self.uncertainty)
