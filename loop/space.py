"""Search spaces: what a campaign may propose.

A :class:`SearchSpace` is a box of named parameters (continuous, integer, categorical) with
optional linear constraints, such as a composition simplex (fractions that sum to 1). It
encodes parameter dictionaries into the ``n x d`` tensors that BoTorch models see, and
decodes them back. Every candidate gets a stable id, a hash of its canonical parameters, so
the same candidate is recognised wherever and whenever it turns up. The parameters and
constraints themselves are in :mod:`loop.parameters` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from loop.candidate import Candidate, ParamValue
from loop.errors import SpaceError
from loop.parameters import Categorical, Continuous, Integer, LinearConstraint, Parameter

__all__ = ["Categorical", "Continuous", "Integer", "LinearConstraint", "Parameter", "SearchSpace"]

_CONSTRAINT_TOL = 1e-6


class SearchSpace:
    """Named parameters, optional linear constraints, and their tensor encoding.

    Args:
        parameters: The parameters, in the order of the encoded columns.
        constraints: Linear constraints over continuous parameters.
    """

    def __init__(self, parameters: Sequence[Parameter], constraints: Sequence[LinearConstraint] = ()) -> None:
        names = [p.name for p in parameters]
        if not names:
            raise SpaceError("a search space needs at least one parameter")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SpaceError(f"parameter names must be unique, repeated: {duplicated}")
        self.parameters: tuple[Parameter, ...] = tuple(parameters)
        self.constraints: tuple[LinearConstraint, ...] = tuple(constraints)
        self._by_name = {p.name: p for p in self.parameters}
        for constraint in self.constraints:
            for name, _ in constraint.coefficients:
                if not isinstance(self._by_name.get(name), Continuous):
                    raise SpaceError(
                        f"constraint {constraint} refers to {name!r}, which is not a "
                        "continuous parameter of the space"
                    )
        self._columns: dict[str, int] = {}
        column = 0
        for p in self.parameters:
            self._columns[p.name] = column
            column += p.width
        self.dim = column

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def __getitem__(self, name: str) -> Parameter:
        return self._by_name[name]

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``d`` encoded columns (``name=choice`` for one-hot columns)."""
        names: list[str] = []
        for p in self.parameters:
            names += [f"{p.name}={c}" for c in p.choices] if isinstance(p, Categorical) else [p.name]
        return names

    def columns(self, name: str) -> range:
        """The encoded columns of parameter ``name`` (several for a categorical)."""
        start = self._columns[name]
        return range(start, start + self._by_name[name].width)

    # --- validation -------------------------------------------------------------------------

    def canonical(self, params: Mapping[str, Any]) -> dict[str, ParamValue]:
        """Check ``params`` against the space and return their canonical form.

        Raises:
            SpaceError: naming the unknown, missing or out-of-range parameter, or the violated
                constraint.
        """
        unknown = sorted(set(params) - set(self._by_name))
        if unknown:
            raise SpaceError(f"unknown parameter(s) {unknown}; the space has {self.names}")
        missing = [n for n in self.names if n not in params]
        if missing:
            raise SpaceError(f"missing parameter(s) {missing}")
        canonical = {p.name: p.canonical(params[p.name]) for p in self.parameters}
        for constraint in self.constraints:
            if constraint.violation(canonical) > _CONSTRAINT_TOL:
                raise SpaceError(f"constraint {constraint} violated by {canonical}")
        return canonical

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        """A validated :class:`Candidate` from a parameter dictionary."""
        return Candidate(self.canonical(params))

    # --- encoding ---------------------------------------------------------------------------

    @property
    def bounds(self) -> Tensor:
        """``2 x d`` lower and upper bounds of the encoded space."""
        lower: list[float] = []
        upper: list[float] = []
        for p in self.parameters:
            if isinstance(p, Categorical):
                lower += [0.0] * p.width
                upper += [1.0] * p.width
            else:
                lower.append(float(p.lower))
                upper.append(float(p.upper))
        return torch.tensor([lower, upper], dtype=torch.double)

    def encode(self, params: Iterable[Mapping[str, ParamValue]]) -> Tensor:
        """``n x d`` tensor of canonical parameter dictionaries (categoricals one-hot)."""
        rows = []
        for item in params:
            row: list[float] = []
            for p in self.parameters:
                value = item[p.name]
                if isinstance(p, Categorical):
                    row += [1.0 if c == value else 0.0 for c in p.choices]
                else:
                    row.append(float(value))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.double).reshape(len(rows), self.dim)

    def decode(self, X: Tensor) -> list[dict[str, ParamValue]]:
        """Parameter dictionaries from an ``n x d`` tensor (integers rounded, categoricals by argmax)."""
        out = []
        for row in X.detach().cpu().double().tolist():
            params: dict[str, ParamValue] = {}
            for p in self.parameters:
                col = self._columns[p.name]
                if isinstance(p, Categorical):
                    params[p.name] = p.choices[int(np.argmax(row[col : col + p.width]))]
                elif isinstance(p, Integer):
                    params[p.name] = int(min(max(round(row[col]), p.lower), p.upper))
                else:
                    params[p.name] = float(min(max(row[col], p.lower), p.upper))
            out.append(params)
        return out

    def botorch_constraints(
        self,
    ) -> tuple[list[tuple[Tensor, Tensor, float]], list[tuple[Tensor, Tensor, float]]]:
        """Constraints as BoTorch wants them: ``(inequality, equality)`` lists of
        ``(indices, coefficients, rhs)`` meaning ``sum(coefficients * X[indices]) >= rhs``
        (or ``== rhs``)."""
        inequality, equality = [], []
        for c in self.constraints:
            index = torch.tensor([self._columns[n] for n, _ in c.coefficients])
            coeffs = torch.tensor([v for _, v in c.coefficients], dtype=torch.double)
            if c.sense == "==":
                equality.append((index, coeffs, c.rhs))
            elif c.sense == ">=":
                inequality.append((index, coeffs, c.rhs))
            else:
                inequality.append((index, -coeffs, -c.rhs))
        return inequality, equality

    # --- sampling ---------------------------------------------------------------------------

    def sample(self, n: int, seed: int) -> list[dict[str, ParamValue]]:
        """``n`` random feasible parameter dictionaries.

        Composition simplices are sampled exactly (uniform Dirichlet); other linear
        constraints by hit-and-run over their polytope; free parameters uniformly.
        """
        rng = np.random.default_rng(seed)
        values: dict[str, list[ParamValue]] = {}
        if self.constraints and all(self._is_plain_simplex(c) for c in self.constraints):
            for c in self.constraints:
                draws = rng.dirichlet(np.ones(len(c.coefficients)), size=n) * c.rhs
                for k, (name, _) in enumerate(c.coefficients):
                    values[name] = draws[:, k].tolist()
        elif self.constraints:
            values |= self._polytope_sample(n, seed)
        for p in self.parameters:
            if p.name in values:
                continue
            if isinstance(p, Continuous):
                values[p.name] = rng.uniform(p.lower, p.upper, n).tolist()
            elif isinstance(p, Integer):
                values[p.name] = rng.integers(p.lower, p.upper + 1, n).tolist()
            else:
                values[p.name] = [p.choices[i] for i in rng.integers(0, p.width, n)]
        return [{p.name: values[p.name][i] for p in self.parameters} for i in range(n)]

    def _is_plain_simplex(self, c: LinearConstraint) -> bool:
        """``sum(x_i) == total`` with every ``x_i`` in ``[0, >= total]``, sharing no parameter
        with another constraint: a simplex that Dirichlet sampling covers exactly."""
        names = [n for n, _ in c.coefficients]
        others = {n for o in self.constraints if o is not c for n, _ in o.coefficients}
        return (
            c.sense == "=="
            and c.rhs > 0
            and all(coefficient == 1.0 for _, coefficient in c.coefficients)
            and not others & set(names)
            and all(self[n].lower == 0 and self[n].upper >= c.rhs for n in names)  # type: ignore[union-attr]
        )

    def _polytope_sample(self, n: int, seed: int) -> dict[str, list[ParamValue]]:
        from botorch.utils.sampling import get_polytope_samples

        continuous = [p for p in self.parameters if isinstance(p, Continuous)]
        sub = SearchSpace(continuous, self.constraints)
        inequality, equality = sub.botorch_constraints()
        X = get_polytope_samples(
            n,
            sub.bounds,
            inequality_constraints=inequality or None,
            equality_constraints=equality or None,
            seed=seed,
            n_burnin=200,
            n_thinning=20,
        )
        return {
            p.name: [min(max(v, p.lower), p.upper) for v in column]
            for p, column in zip(continuous, X.T.tolist(), strict=True)
        }

    # --- round trip -------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        params = []
        for p in self.parameters:
            kind = type(p).__name__.lower()
            body: dict[str, Any] = {"name": p.name, "type": kind, "unit": p.unit}
            if isinstance(p, Categorical):
                body["choices"] = list(p.choices)
            else:
                body |= {"lower": p.lower, "upper": p.upper}
            params.append(body)
        constraints = [
            {"coefficients": dict(c.coefficients), "rhs": c.rhs, "sense": c.sense} for c in self.constraints
        ]
        return {"parameters": params, "constraints": constraints}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        kinds = {"continuous": Continuous, "integer": Integer, "categorical": Categorical}
        params = []
        for body in d["parameters"]:
            body = dict(body)
            kind = kinds[body.pop("type")]
            if kind is Categorical:
                body["choices"] = tuple(body["choices"])
            params.append(kind(**body))
        constraints = [
            LinearConstraint(tuple(c["coefficients"].items()), c["rhs"], c["sense"])
            for c in d.get("constraints", ())
        ]
        return cls(params, constraints)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        # Consistent with __eq__: bounds given as 0 and 0.0 compare equal, so they must hash
        # equal (a JSON dump would write "0" and "0.0").
        return hash((tuple(self.names), len(self.constraints)))

    def __repr__(self) -> str:
        return f"SearchSpace({self.names}, constraints={[str(c) for c in self.constraints]})"
