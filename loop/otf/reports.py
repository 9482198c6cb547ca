"""What an on-the-fly run reports: each label, each round, the run, and its checkpointed counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loop.calibration import LEVELS, MIN_COUNT, coverage, prequential_scores


@dataclass(frozen=True)
class Label:
    """The outcome of one oracle call on a paused frame."""

    walker: str
    step: int
    candidate_id: str
    uncertainty: float
    error: float | None = None
    """Force error of the committee before it learnt the frame (eV/Å, RMS over atoms)."""
    mae: float | None = None
    """Mean absolute force-component error of the committee on the frame (eV/Å)."""
    failure: str | None = None
    reused: bool = False
    """Found in the ledger (labelled before a restart), not sent to the oracle again."""


@dataclass
class RoundReport:
    """What one round of walking, labelling and retraining did."""

    round: int
    labels: list[Label]
    threshold: float
    dataset_size: int
    oracle_calls: int
    md_steps: int
    validation_force_mae: float | None
    seconds: float


@dataclass
class OTFReport:
    """Where the run stands."""

    name: str
    md_steps: int
    oracle_calls: int
    failed_calls: int
    dataset_size: int
    threshold: float
    rounds: int
    retrains: int
    rollbacks: int
    stopped_calling: str | None
    stopped_calling_at_step: int | None
    final_fit_frames: int | None
    resumed_from_steps: dict[str, int] | None
    lost_walkers: list[str]
    seconds: float
    force_coverage: dict[str, Any] | None = None
    """How often the committee's force spread covered the true error (:func:`force_coverage`)."""

    @property
    def oracle_step_fraction(self) -> float:
        return self.oracle_calls / self.md_steps if self.md_steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "oracle_step_fraction": self.oracle_step_fraction}


def force_coverage(ratios: Sequence[float], min_count: int = MIN_COUNT) -> dict[str, Any]:
    """Coverage of the committee's force intervals, per frame: the share of oracle calls whose
    RMS force error ``e`` lies within ``k`` RMS committee spreads ``u`` (``e / u <= k``), with
    ``k`` the half-width of the central 50/80/90/95% normal interval, and RMS of ``e / u``;
    before and after recalibration (:func:`pooled_force_coverage`).

    Args:
        ratios: ``e / u`` of every oracle call with a positive spread, in the order measured
            (eV/Å over eV/Å).
        min_count: Ratios needed before a recalibration changes the spread.
    """
    return pooled_force_coverage([ratios], min_count)


def pooled_force_coverage(runs: Sequence[Sequence[float]], min_count: int = MIN_COUNT) -> dict[str, Any]:
    """:func:`force_coverage` over several runs' ratios, pooled.

    ``recalibrated`` holds what the spread scaled by a recalibration (``scale``: RMS of the
    ratios; ``conformal``: their 90% quantile over ``Φ⁻¹(0.95)``) would have covered, each call's
    factor fitted to the earlier calls of its own run only (:func:`~loop.calibration.prequential_scores`).
    """

    def numbers(r: Sequence[float]) -> dict[str, Any]:
        return {
            "rms_ratio": (sum(v * v for v in r) / len(r)) ** 0.5 if r else None,
            "coverage": {f"{level:g}": coverage(list(r), level) for level in LEVELS},
        }

    raw = [r for run in runs for r in run]
    recalibrated = {
        method: numbers([v for run in runs for v in prequential_scores(run, method, min_count)])
        for method in ("scale", "conformal")
    }
    return {"count": len(raw), **numbers(raw), "min_count": min_count, "recalibrated": recalibrated}


@dataclass
class Progress:
    """Counters that survive a restart (part of the checkpoint)."""

    round: int = 0
    md_steps: int = 0
    retrains: int = 0
    calls_within_tolerance: int = 0
    quiet_steps: int = 0
    stopped_calling: str | None = None
    stopped_calling_at_step: int | None = None
    final_fit_frames: int | None = None
