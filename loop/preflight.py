"""Pre-flight checks: a campaign's configuration is refused before its first experiment.

Every check here runs while the campaign's parts are built from the configuration
(:mod:`loop.build`), before the ledger is opened, so a bad input fails with one line that
names the problem and writes nothing:

* the constraints leave a feasible point (decided by a linear program);
* the oracle's safety envelope (``[oracle.safety]``) is intersected with the search space,
  so the optimiser never proposes what the envelope refuses, and must leave a point;
* a function-backed emulator reads only parameters the space has and returns every
  property it must report (one dry call on one point, not recorded anywhere);
* a dataset-backed lab has a column for every objective.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loop.candidate import ParamValue
from loop.errors import ConfigError
from loop.pool import CandidatePool
from loop.space import Categorical, Continuous, Integer, LinearConstraint, Parameter, SearchSpace

log = logging.getLogger("alloop.preflight")

# --- constraints ----------------------------------------------------------------------------


def check_feasible(space: SearchSpace, problem: str = "space.constraints") -> None:
    """Refuse a space whose linear constraints no point within the bounds satisfies.

    Args:
        space: The search space.
        problem: What the message blames (the key of the configuration at fault).

    Raises:
        ConfigError: naming the smallest set of constraints that cannot hold together.
    """
    constraints = list(space.constraints)
    if not constraints or not _infeasible(space, constraints):
        return
    # Deletion filter: drop every constraint the conflict does not need.
    for constraint in list(constraints):
        rest = [c for c in constraints if c is not constraint]
        if rest and _infeasible(space, rest):
            constraints = rest
    if len(constraints) == 1:
        (constraint,) = constraints
        low, high = _lhs_range(space, constraint)
        raise ConfigError(
            f"{problem}: constraint {constraint} cannot hold within its parameters' bounds "
            f"({_bounds_text(space, constraint)}), where its left side ranges over [{low:g}, {high:g}]"
        )
    raise ConfigError(
        f"{problem}: constraints {'; '.join(str(c) for c in constraints)} contradict each other: "
        f"no point within the bounds ({_bounds_text(space, *constraints)}) satisfies them all"
    )


def _infeasible(space: SearchSpace, constraints: Sequence[LinearConstraint]) -> bool:
    """Whether no point within the bounds satisfies every one of ``constraints`` (an LP)."""
    from scipy.optimize import linprog

    names = sorted({n for c in constraints for n, _ in c.coefficients}, key=space.names.index)
    column = {name: k for k, name in enumerate(names)}
    upper_rows, upper_rhs, equal_rows, equal_rhs = [], [], [], []
    for c in constraints:
        row = np.zeros(len(names))
        for name, coefficient in c.coefficients:
            row[column[name]] += coefficient
        if c.sense == "==":
            equal_rows.append(row)
            equal_rhs.append(c.rhs)
        else:
            sign = 1.0 if c.sense == "<=" else -1.0
            upper_rows.append(sign * row)
            upper_rhs.append(sign * c.rhs)
    result = linprog(
        np.zeros(len(names)),
        A_ub=np.array(upper_rows) if upper_rows else None,
        b_ub=np.array(upper_rhs) if upper_rows else None,
        A_eq=np.array(equal_rows) if equal_rows else None,
        b_eq=np.array(equal_rhs) if equal_rows else None,
        bounds=[_bounds(space[n]) for n in names],
        method="highs",
    )
    return bool(result.status == 2)


def _lhs_range(space: SearchSpace, constraint: LinearConstraint) -> tuple[float, float]:
    """The least and greatest value of a constraint's left side within the bounds."""
    low = high = 0.0
    for name, coefficient in constraint.coefficients:
        a, b = (coefficient * v for v in _bounds(space[name]))
        low, high = low + min(a, b), high + max(a, b)
    return low, high


def _bounds_text(space: SearchSpace, *constraints: LinearConstraint) -> str:
    names = sorted({n for c in constraints for n, _ in c.coefficients}, key=space.names.index)
    return ", ".join("{} in [{:g}, {:g}]".format(n, *_bounds(space[n])) for n in names)


def _bounds(parameter: Parameter) -> tuple[float, float]:
    """A constrained parameter's bounds (constraints are over continuous parameters only)."""
    assert not isinstance(parameter, Categorical)
    return float(parameter.lower), float(parameter.upper)


# --- safety envelope ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """The safety envelope's limit on one parameter: a range, or the values it may take."""

    min: float | None = None
    max: float | None = None
    allowed: tuple[str | float, ...] | None = None


def safety_envelope(options: Mapping[str, Any]) -> dict[str, Limit]:
    """The ``safety`` table of a plug-in oracle's options (``[oracle.safety]``), parameter → limit.

    Only what restricting the space needs is read here; the oracle's own builder validates
    the rest of its options.

    Raises:
        ConfigError: a limit is not a table, or a bound is not a number, naming its key.
    """
    table = options.get("safety") or {}
    if not isinstance(table, Mapping):
        raise ConfigError("oracle.safety: must be a table of parameter = { min, max, allowed }")
    envelope = {}
    for name, body in table.items():
        key = f"oracle.safety.{name}"
        if not isinstance(body, Mapping):
            raise ConfigError(f"{key}: must be a table such as {{ min = 0, max = 1 }}")
        bounds = {}
        for side in ("min", "max"):
            value = body.get(side)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"{key}.{side}: must be a number, got {value!r}")
            bounds[side] = None if value is None else float(value)
        allowed = body.get("allowed")
        if allowed is not None and not isinstance(allowed, list | tuple):
            raise ConfigError(f"{key}.allowed: must be a list of values, got {allowed!r}")
        envelope[str(name)] = Limit(bounds["min"], bounds["max"], None if allowed is None else tuple(allowed))
    return envelope


def restrict_space(space: SearchSpace, envelope: Mapping[str, Limit]) -> SearchSpace:
    """``space`` cut down to the safety envelope: bounds narrowed, choices filtered.

    Raises:
        ConfigError: the envelope names a parameter the space lacks, bounds a parameter in a
            way the space cannot express, or leaves no point (alone or with the constraints).
    """
    if not envelope:
        return space
    _check_names(space, envelope)
    parameters = [_restrict(p, envelope[p.name]) if p.name in envelope else p for p in space.parameters]
    restricted = SearchSpace(parameters, space.constraints)
    problem = f"oracle.safety leaves no point of the space ({_envelope_text(envelope)})"
    check_feasible(restricted, problem)
    return restricted


def restrict_pool(pool: CandidatePool, envelope: Mapping[str, Limit]) -> CandidatePool:
    """The pool's candidates inside the safety envelope; one warning counts those left out.

    Raises:
        ConfigError: the envelope names a parameter the pool lacks, or leaves no candidate.
    """
    if not envelope:
        return pool
    _check_names(pool.space, envelope)
    inside = [c for c in pool.candidates if all(_admits(envelope[n], c.params[n]) for n in envelope)]
    if not inside:
        raise ConfigError(
            f"oracle.safety leaves none of the pool's {len(pool)} candidates ({_envelope_text(envelope)})"
        )
    if len(inside) < len(pool):
        log.warning(
            "oracle.safety: %d of %d pool candidate(s) lie outside the envelope and are never proposed",
            len(pool) - len(inside),
            len(pool),
        )
        return CandidatePool(pool.space, inside)
    return pool


def _check_names(space: SearchSpace, envelope: Mapping[str, Limit]) -> None:
    unknown = [n for n in envelope if n not in space.names]
    if unknown:
        raise ConfigError(
            f"oracle.safety bounds {unknown}, not parameters of the space {space.names}: "
            "the envelope would refuse every candidate"
        )


def _restrict(parameter: Parameter, limit: Limit) -> Parameter:
    key = f"oracle.safety.{parameter.name}"
    if isinstance(parameter, Categorical):
        if limit.min is not None or limit.max is not None:
            raise ConfigError(f"{key}: 'min'/'max' bound numbers, but {parameter.name!r} is categorical")
        choices = tuple(c for c in parameter.choices if limit.allowed is None or c in map(str, limit.allowed))
        if not choices:
            raise ConfigError(
                f"{key}: none of the choices {list(parameter.choices)} of {parameter.name!r} is allowed "
                f"({list(limit.allowed or ())})"
            )
        return dataclasses.replace(parameter, choices=choices)
    lower, upper = float(parameter.lower), float(parameter.upper)
    if limit.min is not None:
        lower = max(lower, limit.min)
    if limit.max is not None:
        upper = min(upper, limit.max)
    if limit.allowed is not None:
        lower, upper = _allowed_range(parameter, limit.allowed, lower, upper)
    if isinstance(parameter, Integer):
        lower, upper = math.ceil(lower - 1e-9), math.floor(upper + 1e-9)
    if lower > upper:
        raise ConfigError(
            f"{key}: the envelope leaves nothing of {parameter.name!r} in [{parameter.lower:g}, "
            f"{parameter.upper:g}] ({_limit_text(limit)})"
        )
    if isinstance(parameter, Integer):
        return Integer(parameter.name, int(lower), int(upper), parameter.unit)
    return Continuous(parameter.name, lower, upper, parameter.unit)


def _allowed_range(
    parameter: Continuous | Integer, allowed: Sequence[str | float], lower: float, upper: float
) -> tuple[float, float]:
    """The range a numeric parameter keeps under an ``allowed`` list, which must be all of it."""
    key = f"oracle.safety.{parameter.name}.allowed"
    try:
        values = sorted(float(v) for v in allowed if lower <= float(v) <= upper)
    except ValueError:
        raise ConfigError(
            f"{key}: {parameter.name!r} is numeric, but {list(allowed)} is not all numbers"
        ) from None
    if not values:
        raise ConfigError(
            f"{key}: none of {list(allowed)} lies in {parameter.name!r}'s range [{lower:g}, {upper:g}]"
        )
    whole = values[0] == values[-1] or (
        isinstance(parameter, Integer)
        and {int(v) for v in values} == set(range(int(values[0]), int(values[-1]) + 1))
    )
    if not whole:
        raise ConfigError(
            f"{key}: a list of values cannot restrict the range of {type(parameter).__name__.lower()} "
            f"parameter {parameter.name!r}; give 'min'/'max', or make it categorical"
        )
    return values[0], values[-1]


def _admits(limit: Limit, value: ParamValue) -> bool:
    if limit.allowed is not None and value not in limit.allowed and str(value) not in map(str, limit.allowed):
        return False
    if limit.min is None and limit.max is None:
        return True
    if isinstance(value, str):
        return False
    return (limit.min is None or value >= limit.min) and (limit.max is None or value <= limit.max)


def _limit_text(limit: Limit) -> str:
    parts = [f"{k} = {v:g}" for k, v in (("min", limit.min), ("max", limit.max)) if v is not None]
    return ", ".join(parts + ([f"allowed = {list(limit.allowed)}"] if limit.allowed is not None else []))


def _envelope_text(envelope: Mapping[str, Limit]) -> str:
    return "; ".join(f"{name}: {_limit_text(limit)}" for name, limit in envelope.items())


# --- oracle contract ------------------------------------------------------------------------


class _Reads(Mapping[str, ParamValue]):
    """A parameter mapping that notes what a function reads and asks for in vain."""

    def __init__(self, params: Mapping[str, ParamValue]) -> None:
        self._params = dict(params)
        self.read: set[str] = set()
        self.unknown: list[str] = []

    def __getitem__(self, name: str) -> ParamValue:
        if name not in self._params:
            self.unknown.append(name)
            raise KeyError(name)
        self.read.add(name)
        return self._params[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._params else default

    def __iter__(self) -> Iterator[str]:
        self.read.update(self._params)
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def check_function(
    function: Callable[[Mapping[str, Any]], Mapping[str, float]],
    spec: str,
    params: Mapping[str, ParamValue],
    properties: Sequence[str],
) -> None:
    """Call an emulator's ground-truth function once on ``params`` (a point of the space; the
    result is thrown away) and refuse it if it reads a parameter the space lacks, fails, or
    does not return every property the lab reports.

    Args:
        function: The ground truth, parameter dictionary → property values.
        spec: Its name in the configuration (``oracle.function``).
        params: One point of the search space.
        properties: What the lab reports (the objectives first).

    Raises:
        ConfigError: naming the parameter(s) or property(ies) at fault.
    """
    reads = _Reads(params)
    try:
        values = function(reads)
    except Exception as exc:
        if reads.unknown:
            raise ConfigError(
                f"oracle.function {spec!r} reads parameter(s) {sorted(set(reads.unknown))} that the "
                f"space does not have; the space has {list(params)}"
            ) from None
        raise ConfigError(
            f"oracle.function {spec!r} fails on the trial point {dict(params)}: {exc!r}"
        ) from None
    returned = list(values) if isinstance(values, Mapping) else []
    missing = [p for p in properties if p not in returned]
    if missing:
        raise ConfigError(
            f"oracle.function {spec!r} does not return {missing} (objectives and oracle.properties); "
            f"it returns {returned}"
        )
    unread = [n for n in params if n not in reads.read]
    if unread:
        log.warning("oracle.function %r never read parameter(s) %s on a trial point", spec, unread)


def check_columns(table: pd.DataFrame, objectives: Sequence[str], source: str) -> None:
    """Refuse a dataset-backed lab whose table has no column for an objective.

    Raises:
        ConfigError: naming the objective(s) and the table's columns.
    """
    missing = [o for o in objectives if o not in table.columns]
    if missing:
        raise ConfigError(
            f"objective(s) {missing} are not columns of data file {source!r}; its columns are "
            f"{list(table.columns)}"
        )
