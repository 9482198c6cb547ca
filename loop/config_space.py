"""``[space]`` and ``[[objectives]]``: what a campaign searches and what it measures there.

A space is a finite ``pool`` read from a table, ``parameters`` with linear ``constraints``,
or a ``generator`` plug-in; each section builds the domain objects of :mod:`loop.parameters`
and :mod:`loop.space`, which never know they came from a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loop.config_base import Strict
from loop.errors import SpaceError
from loop.parameters import Categorical, Continuous, Integer, LinearConstraint, Parameter
from loop.plugins import POOL_PLUGINS, PluginSection
from loop.space import SearchSpace


class ParameterConfig(Strict):
    name: str = Field(min_length=1)
    type: Literal["continuous", "integer", "categorical"]
    lower: float | None = None
    upper: float | None = None
    choices: list[str] | None = None
    unit: str = ""

    @model_validator(mode="after")
    def _complete(self) -> ParameterConfig:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError(f"categorical parameter {self.name!r} needs 'choices'")
        elif self.lower is None or self.upper is None:
            raise ValueError(f"{self.type} parameter {self.name!r} needs 'lower' and 'upper'")
        elif self.lower > self.upper:
            raise ValueError(f"parameter {self.name!r}: lower {self.lower} > upper {self.upper}")
        elif self.type == "integer" and (self.lower != int(self.lower) or self.upper != int(self.upper)):
            raise ValueError(f"integer parameter {self.name!r} needs integer bounds")
        return self

    def build(self) -> Parameter:
        if self.type == "categorical":
            return Categorical(self.name, tuple(self.choices or ()), self.unit)
        if self.type == "integer":
            return Integer(self.name, int(self.lower or 0), int(self.upper or 0), self.unit)
        return Continuous(self.name, float(self.lower or 0), float(self.upper or 0), self.unit)


class ConstraintConfig(Strict):
    type: Literal["simplex", "linear"]
    parameters: list[str] | None = None
    total: float = 1.0
    coefficients: dict[str, float] | None = None
    rhs: float | None = None
    sense: Literal["<=", ">=", "=="] = "<="

    @model_validator(mode="after")
    def _complete(self) -> ConstraintConfig:
        if self.type == "simplex" and not self.parameters:
            raise ValueError("a simplex constraint needs 'parameters'")
        if self.type == "linear" and (not self.coefficients or self.rhs is None):
            raise ValueError("a linear constraint needs 'coefficients' and 'rhs'")
        return self

    def build(self) -> LinearConstraint:
        if self.type == "simplex":
            return LinearConstraint.simplex(self.parameters or [], self.total)
        return LinearConstraint(tuple((self.coefficients or {}).items()), float(self.rhs or 0), self.sense)


class PoolConfig(Strict):
    path: Path
    inputs: list[str] = Field(min_length=1)


class SpaceSection(Strict):
    """A finite ``pool`` from a table, ``parameters`` (with ``constraints``), or a
    ``generator`` plug-in that makes a pool (crystal structures, say)."""

    pool: PoolConfig | None = None
    parameters: list[ParameterConfig] = []  # noqa: RUF012 (a pydantic default, copied per instance)
    constraints: list[ConstraintConfig] = []  # noqa: RUF012 (a pydantic default, copied per instance)
    generator: PluginSection | None = None

    @field_validator("parameters")
    @classmethod
    def _distinct_names(cls, parameters: list[ParameterConfig]) -> list[ParameterConfig]:
        names = [p.name for p in parameters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"parameter names must be unique, repeated: {repeated}")
        return parameters

    @field_validator("generator")
    @classmethod
    def _known_generator(cls, generator: PluginSection | None) -> PluginSection | None:
        if generator is not None and generator.type not in POOL_PLUGINS:
            raise ValueError(f"unknown generator type {generator.type!r}; known: {sorted(POOL_PLUGINS)}")
        return generator

    @model_validator(mode="after")
    def _one_kind(self) -> SpaceSection:
        kinds = [self.pool is not None, bool(self.parameters), self.generator is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of 'pool', 'parameters' or 'generator'")
        if self.parameters:
            try:
                self.build()
            except SpaceError as exc:
                raise ValueError(str(exc)) from None
        if not self.parameters and self.constraints:
            raise ValueError("constraints apply to 'parameters' spaces, not to pools")
        return self

    def build(self) -> SearchSpace:
        return SearchSpace([p.build() for p in self.parameters], [c.build() for c in self.constraints])


class ObjectiveConfig(Strict):
    name: str = Field(min_length=1)
    direction: Literal["maximize", "minimize"] = "maximize"
    unit: str = ""
    weight: float | None = Field(default=None, gt=0)
    """Weight of this objective in the scalarised target when there are several; several
    objectives without weights mean a Pareto search (:mod:`loop.labconfig`)."""
    target: float | None = None
    """Stop once a measured value reaches it (>= when maximising, <= when minimising)."""
    log_scale: bool = False
    """Model this objective's logarithm: a positive quantity spanning orders of magnitude
    (conductivity, a rate). A result <= 0 is recorded as a failed evaluation."""
