"""Emulated labs of the lab-grade benchmarks: a hidden failure region, two objectives.

:class:`FailureRegionLab` wraps any oracle and fails, for good, every candidate inside a
region (a synthesis that never works there); the region is hidden from the campaign, which
only sees the failures. The ground truths are registered as ``module:callable`` specs so a
campaign file can name them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from loop.candidate import Candidate
from oracles.base import Oracle, Result
from oracles.errors import EvaluationFailed


class FailureRegionLab(Oracle):
    """``inner``, except that candidates where ``fails(params)`` fail non-retryably.

    Args:
        inner: The oracle that measures the rest.
        fails: The hidden failure region, a predicate on the parameters.
    """

    def __init__(self, inner: Oracle, fails: Callable[[Mapping[str, Any]], bool]) -> None:
        self.inner, self.fails = inner, fails
        self.implemented_properties = inner.implemented_properties
        self.capacity = inner.capacity

    def evaluate(self, candidate: Candidate) -> Result:
        if self.fails(candidate.params):
            raise EvaluationFailed(f"synthesis failed for {candidate.id}", retryable=False)
        return self.inner.evaluate(candidate)

    def close(self) -> None:
        self.inner.close()


def ridge(params: Mapping[str, Any]) -> dict[str, float]:
    """A smooth 2-d test function on ``[0, 1]²`` to maximise; best value 1 at (0.75, 0.7),
    next to the failure region :func:`in_failure_region`."""
    x, y = float(params["x1"]), float(params["x2"])
    return {"y": math.exp(-((x - 0.75) ** 2 + (y - 0.7) ** 2) / 0.08), "cost": 1.0 + 2.0 * x}


def in_failure_region(params: Mapping[str, Any]) -> bool:
    """The hidden failure region: a disc of radius 0.3 around (0.3, 0.3) and the band
    ``x2 > 0.88`` — together 40% of the unit square."""
    x, y = float(params["x1"]), float(params["x2"])
    return (x - 0.3) ** 2 + (y - 0.3) ** 2 < 0.09 or y > 0.88


def two_objectives(params: Mapping[str, Any]) -> dict[str, float]:
    """Two conflicting objectives on ``[0, 1]²``, both maximised: ``f1`` peaks at (0.2, 0.5),
    ``f2`` at (0.8, 0.5); ``width`` (to keep ``<= 0.5``) grows with ``x2``."""
    x, y = float(params["x1"]), float(params["x2"])
    f1 = math.exp(-((x - 0.2) ** 2 + (y - 0.5) ** 2) / 0.1)
    f2 = math.exp(-((x - 0.8) ** 2 + (y - 0.5) ** 2) / 0.1)
    return {"f1": f1, "f2": f2, "width": y}
