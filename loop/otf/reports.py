"""What an on-the-fly run reports: each label, each round, the run, and its checkpointed counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loop.calibration import LEVELS, MIN_COUNT, Method, coverage, fit_scale, prequential_scores


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
    force_z: tuple[float, ...] = field(default=(), repr=False)
    """Each force component's error over the committee's spread for it
    (:func:`~surrogates.mlip.force_z_scores`), before it learnt the frame."""


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


def force_coverage(
    ratios: Sequence[float], min_count: int = MIN_COUNT, force_z: Sequence[Sequence[float]] = ()
) -> dict[str, Any]:
    """Coverage of the committee's force intervals, before and after recalibration
    (:func:`pooled_force_coverage` of one run).

    Args:
        ratios: ``e / u`` of every oracle call with a positive spread, in the order measured:
            the frame's RMS force error over its RMS committee spread (eV/Å over eV/Å).
        min_count: Oracle calls needed before a recalibration changes the spread.
        force_z: Per oracle call, in the same order, its force components' z-scores
            (:func:`~surrogates.mlip.force_z_scores`).
    """
    return pooled_force_coverage([ratios], min_count, [force_z])


def pooled_force_coverage(
    runs: Sequence[Sequence[float]],
    min_count: int = MIN_COUNT,
    runs_force_z: Sequence[Sequence[Sequence[float]]] = (),
) -> dict[str, Any]:
    """Force coverage over several runs' oracle calls, pooled.

    Per frame: the share of calls whose ratio ``e / u`` lies within ``k`` (the half-width of
    the central 50/80/90/95% normal interval), and the RMS ratio. A ratio is an RMS over the
    frame's atoms, so it gathers near its typical value instead of spreading as ``|z|`` does:
    its coverage says whether frames are covered, not how well the intervals are sized.
    ``components`` is that measure: the share of force components' z-scores inside each central
    interval. ``recalibrated`` holds both as a recalibration of the spread would have made them
    (``scale``: RMS; ``conformal``: the 90% quantile of ``|z|`` over ``Φ⁻¹(0.95)``), each call's
    factor fitted to the earlier calls of its own run only, factor 1 until ``min_count`` calls
    are in.
    """

    def numbers(values: Sequence[float], rms_key: str) -> dict[str, Any]:
        return {
            "count": len(values),
            rms_key: (sum(v * v for v in values) / len(values)) ** 0.5 if values else None,
            "coverage": {f"{level:g}": coverage(list(values), level) for level in LEVELS},
        }

    methods: tuple[Method, ...] = ("scale", "conformal")
    raw = [r for run in runs for r in run]
    z_runs = [run for run in runs_force_z if run]
    out: dict[str, Any] = {
        **numbers(raw, "rms_ratio"),
        "min_count": min_count,
        "recalibrated": {
            method: numbers(
                [v for run in runs for v in prequential_scores(run, method, min_count)], "rms_ratio"
            )
            for method in methods
        },
    }
    if z_runs:
        out["components"] = {
            **numbers([z for run in z_runs for call in run for z in call], "rms_z"),
            "recalibrated": {
                method: numbers(
                    [z for run in z_runs for z in _prequential_calls(run, method, min_count)], "rms_z"
                )
                for method in methods
            },
        }
    return out


def _prequential_calls(calls: Sequence[Sequence[float]], method: Method, min_count: int) -> list[float]:
    """Every call's z-scores over the factor fitted to the z-scores of the calls before it
    (1 until ``min_count`` calls are in)."""
    out: list[float] = []
    for i, call in enumerate(calls):
        earlier = [z for before in calls[:i] for z in before]
        factor = fit_scale(earlier, method, min_count=1) if i >= min_count else 1.0
        out += [z / factor for z in call]
    return out


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
