"""Parameters of a search space and the linear constraints between them.

A parameter knows its own domain: it checks a value and gives its canonical form (an integer
stays an integer, a categorical one of its choices). Kept apart from
:class:`~loop.space.SearchSpace`, which only combines them, encodes and samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np

from loop.candidate import ParamValue
from loop.errors import SpaceError


@dataclass(frozen=True)
class _Bounded:
    """A numeric parameter in ``[lower, upper]``, one encoded column."""

    name: str
    lower: float
    upper: float
    unit: str = ""

    def __post_init__(self) -> None:
        _check_bounds(self.name, self.lower, self.upper)

    @property
    def width(self) -> int:
        return 1

    def _checked(self, value: Any) -> float:
        number = _as_number(self.name, value)
        _check_inside(self.name, number, self.lower, self.upper)
        return number


@dataclass(frozen=True)
class Continuous(_Bounded):
    """A real-valued parameter in ``[lower, upper]``."""

    def canonical(self, value: Any) -> float:
        return float(self._checked(value))


@dataclass(frozen=True)
class Integer(_Bounded):
    """An integer parameter in ``[lower, upper]`` (both included)."""

    lower: int
    upper: int

    def canonical(self, value: Any) -> int:
        number = self._checked(value)
        if number != round(number):
            raise SpaceError(f"parameter {self.name!r} must be an integer, got {value!r}")
        return round(number)


@dataclass(frozen=True)
class Categorical:
    """A parameter that takes one of a few named choices (one-hot encoded for the model)."""

    name: str
    choices: tuple[str, ...]
    unit: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))
        if len(self.choices) < 1 or len(set(self.choices)) != len(self.choices):
            raise SpaceError(f"parameter {self.name!r} needs distinct choices, got {self.choices}")

    @property
    def width(self) -> int:
        return len(self.choices)

    def canonical(self, value: Any) -> str:
        if str(value) not in self.choices:
            raise SpaceError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}")
        return str(value)


Parameter: TypeAlias = Continuous | Integer | Categorical


@dataclass(frozen=True)
class LinearConstraint:
    """``sum(coefficient * parameter) <sense> rhs`` over continuous parameters.

    Args:
        coefficients: Pairs ``(parameter name, coefficient)``.
        rhs: The right-hand side.
        sense: ``"<="``, ``">="`` or ``"=="``.
    """

    coefficients: tuple[tuple[str, float], ...]
    rhs: float
    sense: Literal["<=", ">=", "=="] = "<="

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficients", tuple((str(n), float(c)) for n, c in self.coefficients))
        if not self.coefficients:
            raise SpaceError("a linear constraint needs at least one coefficient")
        if self.sense not in ("<=", ">=", "=="):
            raise SpaceError(f"constraint sense must be '<=', '>=' or '==', got {self.sense!r}")

    @classmethod
    def simplex(cls, names: Sequence[str], total: float = 1.0) -> LinearConstraint:
        """Fractions that sum to ``total`` (a composition)."""
        return cls(tuple((n, 1.0) for n in names), float(total), "==")

    def violation(self, params: Mapping[str, ParamValue]) -> float:
        """How far ``params`` are from satisfying the constraint (0 when satisfied)."""
        lhs = sum(c * float(params[n]) for n, c in self.coefficients)
        if self.sense == "==":
            return abs(lhs - self.rhs)
        if self.sense == "<=":
            return max(0.0, lhs - self.rhs)
        return max(0.0, self.rhs - lhs)

    def __str__(self) -> str:
        terms = " + ".join(f"{c:g}*{n}" for n, c in self.coefficients)
        return f"{terms} {self.sense} {self.rhs:g}"


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SpaceError(f"parameter {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(float(value)):
        raise SpaceError(f"parameter {name!r} must be finite, got {value!r}")
    return float(value)


def _check_bounds(name: str, lower: float, upper: float) -> None:
    if not (math.isfinite(lower) and math.isfinite(upper)) or lower > upper:
        raise SpaceError(f"parameter {name!r} needs finite bounds lower <= upper, got [{lower}, {upper}]")


def _check_inside(name: str, value: float, lower: float, upper: float) -> None:
    span = max(abs(upper - lower), 1.0)
    if value < lower - 1e-9 * span or value > upper + 1e-9 * span:
        raise SpaceError(f"parameter {name!r} = {value} is outside its bounds [{lower}, {upper}]")
