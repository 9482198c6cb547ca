"""The reference lab's programs: what one kind of run does, with the bounds the hardware tolerates.

A :class:`Program` validates a run's parameters (bounds, integer-ness, choices, linear
constraints) and publishes them as the JSON Schema of the capabilities; :data:`PROGRAMS`
are the two the reference lab runs (Branin and a thin-film experiment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from oracles.functions import GroundTruth, branin, thin_film
from oracles.lab.contract import constraint_violations


@dataclass(frozen=True)
class ProgramParameter:
    """One input of a program with its safe range (numbers) or its allowed values."""

    name: str
    type: Literal["number", "integer", "string"]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""


@dataclass(frozen=True)
class Program:
    """What one kind of run does: its inputs with safe bounds, what it measures, its truth.

    Args:
        name: The program's name, as clients ask for it.
        description: One line for the capabilities document.
        function: The emulator's ground truth.
        parameters: The inputs, with the bounds the hardware tolerates.
        properties: Measured property → unit.
        noise_sd: Measurement noise per property (same unit).
        constraints: Linear constraints ``{"coefficients": {name: c}, "rhs": r, "sense": s}``
            with sense ``"<="``, ``">="`` or ``"=="`` (tolerance 1e-6).
    """

    name: str
    description: str
    function: GroundTruth
    parameters: tuple[ProgramParameter, ...]
    properties: Mapping[str, str]
    noise_sd: Mapping[str, float] = field(default_factory=dict)
    constraints: tuple[Mapping[str, Any], ...] = ()

    def model(self) -> type[BaseModel]:
        """A pydantic model of the parameters: bounds, integer-ness, choices, no extras."""
        fields: dict[str, Any] = {}
        for p in self.parameters:
            description = f"unit: {p.unit}" if p.unit else None
            if p.type == "string":
                fields[p.name] = (Literal[tuple(p.choices)], Field(..., description=description))
            elif p.type == "integer":
                fields[p.name] = (
                    int,
                    Field(..., ge=p.minimum, le=p.maximum, description=description),
                )
            else:
                fields[p.name] = (
                    float,
                    Field(
                        ...,
                        ge=p.minimum,
                        le=p.maximum,
                        allow_inf_nan=False,
                        description=description,
                    ),
                )
        return create_model(
            f"{self.name}_parameters",
            __config__=ConfigDict(extra="forbid", strict=False),
            **fields,
        )

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the parameters, as published in the capabilities."""
        schema = self.model().model_json_schema()
        for p in self.parameters:
            if p.unit:
                schema["properties"][p.name]["x-unit"] = p.unit
        if self.constraints:
            schema["x-constraints"] = [dict(c) for c in self.constraints]
        return schema

    def validate(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical parameters, or :class:`RequestValidationError` listing every problem."""
        try:
            canonical = self.model().model_validate(dict(parameters)).model_dump()
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {
                        "type": e["type"],
                        "loc": ("body", "parameters", *e["loc"]),
                        "msg": e["msg"],
                        "input": e.get("input"),
                    }
                    for e in exc.errors(include_url=False)
                ]
            ) from None
        problems = [
            {"type": "constraint", "loc": ("body", "parameters"), "msg": message, "input": canonical}
            for message in constraint_violations(self.constraints, canonical)
        ]
        if problems:
            raise RequestValidationError(problems)
        return canonical


PROGRAMS: dict[str, Program] = {
    "branin": Program(
        name="branin",
        description="Branin test function as a measurement (minimum 0.397887).",
        function=branin,
        parameters=(
            ProgramParameter("x1", "number", -5.0, 10.0),
            ProgramParameter("x2", "number", 0.0, 15.0),
        ),
        properties={"y": ""},
        noise_sd={"y": 0.1},
    ),
    "thin_film": Program(
        name="thin_film",
        description="Thin-film deposition and anneal; measures conductivity and roughness.",
        function=thin_film,
        parameters=(
            ProgramParameter("x_cu", "number", 0.0, 1.0),
            ProgramParameter("x_ag", "number", 0.0, 1.0),
            ProgramParameter("x_au", "number", 0.0, 1.0),
            ProgramParameter("anneal_c", "number", 200.0, 600.0, unit="degC"),
            ProgramParameter("anneal_min", "integer", 5, 60, unit="min"),
            ProgramParameter("atmosphere", "string", choices=("air", "N2", "Ar")),
        ),
        properties={"conductivity": "1e5 S/cm", "roughness_nm": "nm"},
        noise_sd={"conductivity": 0.05, "roughness_nm": 0.02},
        constraints=({"coefficients": {"x_cu": 1.0, "x_ag": 1.0, "x_au": 1.0}, "rhs": 1.0, "sense": "=="},),
    ),
}
