"""The base every configuration section shares: unknown keys refused, values frozen.

One definition, so a section of the campaign file and a section of the lab-grade keys
(:mod:`loop.labconfig`) refuse a misspelt key alike.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NonNegative = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """A configuration section: an unknown key is an error, and the validated values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
