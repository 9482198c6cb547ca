"""What the ledger's rows read as: an evaluation, a cycle, and a proposal to record.

Plain frozen values, so the campaign, the reports and the workflow engine pass them around
without a database connection; :class:`~loop.ledger.Ledger` reads and writes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loop.calibration import Prediction
from loop.candidate import Candidate
from loop.frame import Frame
from loop.schema import DEFAULT_FIDELITY

Status = Literal["proposed", "submitted", "done", "failed"]
STATUSES: tuple[Status, ...] = ("proposed", "submitted", "done", "failed")


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation row, with its candidate's parameters and its results."""

    id: int
    candidate_id: str
    params: Mapping[str, Any]
    cycle: int
    status: Status
    external_id: str | None = None
    cost: float | None = None
    error: str | None = None
    retryable: bool | None = None
    values: Mapping[str, float] = field(default_factory=dict)
    uncertainties: Mapping[str, float | None] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """What the oracle reported besides the values (provenance, raw-data references...)."""
    frame: Frame | None = None
    """The labelled structure of the result (relaxed structure, energy, forces, stress), if any."""
    fidelity: str = DEFAULT_FIDELITY
    """The fidelity (``[[oracles]]`` entry) that measures it."""

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.params, self.candidate_id)


@dataclass(frozen=True)
class CycleRecord:
    """One cycle row."""

    cycle: int
    status: Literal["open", "closed"]
    acquisition: str | None
    surrogate: Mapping[str, Any] | None
    chosen: Sequence[Mapping[str, Any]] | None
    stop_reason: str | None


@dataclass(frozen=True)
class Proposal:
    """A candidate chosen by a cycle, and why: acquisition value, posterior mean and std;
    ``predictions`` per objective are its calibration record (:mod:`loop.calibration`)."""

    candidate: Candidate
    acquisition_value: float | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    predictions: Mapping[str, Prediction] | None = None
    fidelity: str = DEFAULT_FIDELITY
    """Where it is to be measured (multi-fidelity campaigns)."""
    cost: float | None = None
    """What it will cost, committed with the proposal (multi-fidelity campaigns; else the
    oracle's reported cost is recorded with the result)."""

    def as_dict(self) -> dict[str, Any]:
        fidelity = {} if self.fidelity == DEFAULT_FIDELITY else {"fidelity": self.fidelity}
        return {
            "candidate_id": self.candidate.id,
            **fidelity,
            "acquisition_value": _finite_or_none(self.acquisition_value),
            "mean": None if self.mean is None else [_finite_or_none(v) for v in self.mean],
            "std": None if self.std is None else [_finite_or_none(v) for v in self.std],
        }


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
