"""Shared base class for every config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config model that rejects unknown fields, so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
