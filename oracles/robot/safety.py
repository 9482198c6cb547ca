"""The robot oracle's safety checks: nothing outside the lab's bounds or the campaign's envelope
is sent.

Each candidate is checked against the JSON Schema the lab advertises for its program (types,
bounds, choices, linear ``x-constraints``) and against the campaign's own ``safety`` envelope
(:class:`SafetyBound` per parameter, usually stricter than the lab); a candidate outside
either fails with :class:`SafetyViolation` and never reaches the hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from oracles.errors import EvaluationFailed
from oracles.lab.contract import constraint_violations


class SafetyViolation(EvaluationFailed):
    """A candidate lies outside the lab's advertised bounds or the campaign's safety envelope;
    it was not sent. Never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def schema_violations(
    schema: Mapping[str, Any], params: Mapping[str, Any], who: str = "the lab's"
) -> list[str]:
    """What in ``params`` breaks an advertised parameter schema (the subset of JSON Schema a
    lab uses for parameters: type, minimum/maximum, exclusive bounds, enum/const, required,
    additionalProperties, ``x-constraints``)."""
    problems: list[str] = []
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in params:
            problems.append(f"{name} is missing ({who} program requires it)")
    if schema.get("additionalProperties") is False:
        problems += [
            f"{name} is not a parameter of {who} program" for name in params if name not in properties
        ]
    for name, value in params.items():
        spec = properties.get(name)
        if spec is None:
            continue
        choices = spec.get("enum", [spec["const"]] if "const" in spec else None)
        if choices is not None:
            if value not in choices:
                problems.append(f"{name} = {value!r} is not one of {who} allowed values {choices}")
            continue
        kind = spec.get("type")
        if kind in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{name} = {value!r} is not a number")
                continue
            if value != value or value in (float("inf"), float("-inf")):
                problems.append(f"{name} = {value!r} is not finite")
                continue
            if kind == "integer" and float(value) != int(value):
                problems.append(f"{name} = {value!r} is not an integer")
            for key, test, words in (
                ("minimum", lambda v, b: v < b, "below"),
                ("maximum", lambda v, b: v > b, "above"),
                ("exclusiveMinimum", lambda v, b: v <= b, "not above"),
                ("exclusiveMaximum", lambda v, b: v >= b, "not below"),
            ):
                bound = spec.get(key)
                if bound is not None and test(value, bound):
                    problems.append(f"{name} = {value:g} is {words} {who} {key} {bound:g}")
        elif kind == "string" and not isinstance(value, str):
            problems.append(f"{name} = {value!r} is not a string")
    problems += constraint_violations(schema.get("x-constraints", []), params)
    return problems


class SafetyBound(BaseModel):
    """The campaign's own limit on one parameter: a range, or the values it may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None
    max: float | None = None
    allowed: list[str | float] | None = None

    @model_validator(mode="after")
    def _meaningful(self) -> SafetyBound:
        if self.min is None and self.max is None and self.allowed is None:
            raise ValueError("give 'min', 'max' or 'allowed'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def violations(self, name: str, value: Any) -> list[str]:
        if self.allowed is not None and value not in self.allowed:
            return [f"{name} = {value!r} is not among the safety envelope's allowed values {self.allowed}"]
        if self.min is None and self.max is None:
            return []
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{name} = {value!r} is not a number (the safety envelope bounds it)"]
        if self.min is not None and value < self.min:
            return [f"{name} = {value:g} is below the safety envelope's minimum {self.min:g}"]
        if self.max is not None and value > self.max:
            return [f"{name} = {value:g} is above the safety envelope's maximum {self.max:g}"]
        return []


def envelope_violations(envelope: Mapping[str, SafetyBound], params: Mapping[str, Any]) -> list[str]:
    """What in ``params`` leaves the campaign's safety envelope (a bounded parameter that is
    missing counts as outside)."""
    problems = []
    for name, bound in envelope.items():
        if name not in params:
            problems.append(f"{name} is missing (the safety envelope bounds it)")
        else:
            problems += bound.violations(name, params[name])
    return problems
