"""The oracle contract: something that measures candidates.

An oracle declares the properties it measures (``implemented_properties``, as an ASE
calculator does) and implements one method, :meth:`Oracle.evaluate`, for one candidate.
Batches go through :meth:`Oracle.submit`, which returns one ``Future`` per candidate so that
each result can be committed the moment it arrives; the default runs ``evaluate`` on a
thread pool as wide as the oracle's ``capacity``. Oracles that talk to a remote lab override
``submit``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from loop.candidate import Candidate
from loop.errors import DuplicateCandidateError
from loop.frame import Frame
from oracles.errors import InvalidResult


@dataclass(frozen=True)
class Measurement:
    """One measured property: value, standard uncertainty (same unit) and unit."""

    value: float
    uncertainty: float | None = None
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``value``, ``uncertainty`` (or ``None``) and ``unit``."""
        return {"value": self.value, "uncertainty": self.uncertainty, "unit": self.unit}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Measurement:
        """The inverse of :meth:`as_dict` (``uncertainty`` and ``unit`` may be left out).

        Raises:
            InvalidResult: ``value`` is missing.
        """
        if "value" not in values:
            raise InvalidResult(f"a measurement needs a value; got keys {sorted(values)}")
        return cls(values["value"], values.get("uncertainty"), values.get("unit", ""))


@dataclass(frozen=True)
class Result:
    """What an oracle returns for one candidate.

    Scalar properties are :class:`Measurement` s; array-valued ones travel in ``frame``, as ASE's
    results dict carries them beside the structure they belong to, never in ``metadata``.

    Args:
        candidate_id: The id of the candidate measured.
        measurements: Property name → :class:`Measurement`.
        cost: What the evaluation cost, in the campaign's cost unit.
        metadata: Free-form provenance (instrument, raw-data reference...), JSON-serialisable.
        frame: The labelled structure an atomistic oracle computed, or ``None``: the final
            (relaxed) structure with its total ``energy`` (eV), ``forces`` (``n x 3``, eV/Å)
            and ``stress`` (``6``, Voigt ``xx yy zz yz xz xy``, eV/Å³, or ``None``), as
            read-only arrays; its id is the candidate's. A :class:`~loop.frame.Frame` refuses
            labels that are not finite.

    Raises:
        ValueError: ``frame`` belongs to another candidate.
    """

    candidate_id: str
    measurements: Mapping[str, Measurement]
    cost: float = 1.0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    frame: Frame | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        if self.frame is not None and self.frame.id != self.candidate_id:
            raise ValueError(f"result for {self.candidate_id} carries the frame of {self.frame.id}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``candidate_id``, ``measurements`` (name → :meth:`Measurement.as_dict`),
        ``cost``, ``metadata`` and ``frame`` (:meth:`Frame.as_dict <loop.frame.Frame.as_dict>` or
        ``None``)."""
        return {
            "candidate_id": self.candidate_id,
            "measurements": {name: m.as_dict() for name, m in self.measurements.items()},
            "cost": self.cost,
            "metadata": dict(self.metadata),
            "frame": None if self.frame is None else self.frame.as_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Result:
        """The inverse of :meth:`as_dict` (``cost``, ``metadata`` and ``frame`` may be left out).

        Raises:
            InvalidResult: a key is missing, or the frame is malformed or not finite (NaN forces).
        """
        missing = [key for key in ("candidate_id", "measurements") if key not in values]
        if missing:
            raise InvalidResult(f"a result needs candidate_id and measurements; missing {', '.join(missing)}")
        candidate_id = str(values["candidate_id"])
        frame = values.get("frame")
        try:
            return cls(
                candidate_id,
                {name: Measurement.from_dict(m) for name, m in values["measurements"].items()},
                cost=values.get("cost", 1.0),
                metadata=values.get("metadata") or {},
                frame=None if frame is None else Frame.from_dict({"id": candidate_id, **frame}),
            )
        except InvalidResult:
            raise
        except ValueError as exc:
            raise InvalidResult(f"result for {candidate_id}: {exc}") from None

    def check(self, required: Sequence[str], positive: Sequence[str] = ()) -> None:
        """Refuse results that must not reach a model.

        Args:
            required: Properties the result must have.
            positive: Properties that must be > 0 (a model takes their logarithm).

        Raises:
            InvalidResult: a required property is missing, or a value, uncertainty or cost is
                NaN or infinite, or an uncertainty is negative, or a ``positive`` one is <= 0.
        """
        missing = [p for p in required if p not in self.measurements]
        if missing:
            raise InvalidResult(f"result for {self.candidate_id} lacks propert(ies) {missing}")
        for name, m in self.measurements.items():
            if (
                isinstance(m.value, bool)
                or not isinstance(m.value, int | float)
                or not math.isfinite(m.value)
            ):
                raise InvalidResult(f"result for {self.candidate_id}: {name} = {m.value!r} is not finite")
            if m.uncertainty is not None and not (
                isinstance(m.uncertainty, int | float) and math.isfinite(m.uncertainty) and m.uncertainty >= 0
            ):
                raise InvalidResult(
                    f"result for {self.candidate_id}: uncertainty of {name} = {m.uncertainty} "
                    "is not a finite non-negative number"
                )
        if not (math.isfinite(self.cost) and self.cost >= 0):
            raise InvalidResult(f"result for {self.candidate_id}: cost {self.cost} is not finite and >= 0")
        for name in positive:
            if name in self.measurements and self.measurements[name].value <= 0:
                raise InvalidResult(
                    f"result for {self.candidate_id}: {name} = {self.measurements[name].value!r} is not > 0, "
                    "and it is modelled on a log scale"
                )


class Oracle(ABC):
    """Base class of every oracle.

    Subclasses set ``implemented_properties`` and implement :meth:`evaluate`. Errors follow
    :mod:`oracles.errors`: :class:`~oracles.errors.OracleSetupError` when the oracle cannot
    run at all, :class:`~oracles.errors.EvaluationFailed` when one evaluation fails.
    """

    #: The properties every result of this oracle carries.
    implemented_properties: tuple[str, ...] = ()
    #: How many evaluations may run at once.
    capacity: int = 1

    @abstractmethod
    def evaluate(self, candidate: Candidate) -> Result:
        """Measure one candidate; blocks until the result is there."""

    def submit(
        self, candidates: Sequence[Candidate], on_start: Callable[[Candidate], None] | None = None
    ) -> list[Future[Result]]:
        """Start measuring a batch; one future per candidate, in the same order.

        Args:
            candidates: The batch.
            on_start: Called with each candidate just before it is handed to the instrument
                (the campaign marks it ``submitted`` there). Oracles that override
                ``submit`` must call it before sending each job.

        Raises:
            DuplicateCandidateError: the batch names a candidate twice.
        """
        ids = [c.id for c in candidates]
        if len(set(ids)) != len(ids):
            raise DuplicateCandidateError(f"batch names a candidate twice: {ids}")

        def start(candidate: Candidate) -> Result:
            if on_start is not None:
                on_start(candidate)
            return self.evaluate(candidate)

        executor = ThreadPoolExecutor(max_workers=max(1, min(self.capacity, len(candidates))))
        futures = [executor.submit(start, c) for c in candidates]
        executor.shutdown(wait=False)
        return futures

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the oracle holds (connections, processes). Idempotent."""

    def handle(self, future: Future[Result]) -> str | None:
        """The oracle's own id for a submitted job (stored in the ledger), if it has one."""
        return getattr(future, "external_id", None)

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reattachable:
    """Mixin for oracles whose jobs outlive the process that submitted them (remote labs).

    A campaign that finds evaluations left ``submitted`` by a dead process asks such an
    oracle to re-attach to them instead of recording them as lost.
    """

    def reattach(self, candidate: Candidate, external_id: str | None) -> Future[Result]:
        """A future for a job an earlier process submitted (``external_id`` from the ledger)."""
        raise NotImplementedError
