"""The answer every specialist head gives: its text and the evidence the cascade scores."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeadAnswer"]


@dataclass(frozen=True)
class HeadAnswer:
    """One answer with its evidence, in the shape an LLM tier reports it."""

    text: str
    token_logprobs: list[float]
    top_logprobs: list[list[float]]
