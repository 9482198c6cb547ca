"""Prequential calibration: how well a campaign's surrogate knows what it does not know.

Every measurement is a held-out test of the model that chose it. At proposal time the ledger
records each candidate's predictive mean and two standard deviations per objective (the
latent function's, and with the fitted observation noise: the *predictive* one); when the
result arrives, its standardised error ``z = (y - mean) / std`` joins the campaign's
calibration record. Nothing else is written: the record is the join of the ``predictions``
and ``results`` tables.

A calibrated std has ``RMS(z) = 1`` and its central ``p`` interval ``mean ± Φ⁻¹((1+p)/2) std``
covers a fraction ``p`` of the results. A recalibration (:func:`fit_recalibration`) is one
factor per objective on the predictive std, fitted to the z-scores known so far:

* ``"scale"``: ``RMS(z)`` (makes the Gaussian intervals right on average);
* ``"conformal"``: the split-conformal ``ceil((n+1)·0.9)/n`` quantile of ``|z|`` divided by
  ``Φ⁻¹(0.95)`` (makes the 90% interval right, distribution-free);
* ``"none"``: 1.

Below ``min_count`` z-scores the factor stays 1. The recalibrated std serves the stopping
rules, and the acquisition too unless the scope (``[surrogate] calibration_applies_to``) is
``"stopping"``. This module is pure (no torch, no ledger).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import IO, Any, Literal

Method = Literal["none", "scale", "conformal"]
Std = Literal["latent", "predictive", "recalibrated"]
METHODS: tuple[Method, ...] = ("none", "scale", "conformal")
#: Which decisions a recalibration serves: all of them, or the stopping rules only.
Scope = Literal["all", "stopping"]

#: Central interval levels that reports give coverage for.
LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)

#: Levels of the reliability diagram (expected coverage on the x axis).
DIAGRAM_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

#: The interval level a conformal recalibration makes right.
CONFORMAL_LEVEL = 0.9

#: Z-scores needed before a recalibration changes the std.
MIN_COUNT = 10


def half_width(level: float) -> float:
    """Half-width, in standard deviations, of the central ``level`` interval of a normal."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


@dataclass(frozen=True)
class Prediction:
    """What the surrogate said of one objective at one candidate when it was proposed.

    ``std_scale`` is the recalibration factor in force then: the stopping rules' std was
    ``std_scale · predictive_std`` (the acquisition's was ``std_scale · latent_std`` where the
    recalibration applied to it too).
    """

    mean: float
    latent_std: float
    predictive_std: float
    std_scale: float = 1.0


@dataclass(frozen=True)
class CalibrationPoint:
    """A prediction joined with its measurement (``value``; ``None`` while not measured)."""

    evaluation_id: int
    cycle: int
    property: str
    prediction: Prediction
    value: float | None

    def z(self, std: Std) -> float | None:
        """The standardised error against one of the stds (``None``: not measured, or std 0)."""
        p = self.prediction
        sigma = {
            "latent": p.latent_std,
            "predictive": p.predictive_std,
            "recalibrated": p.predictive_std * p.std_scale,
        }[std]
        if self.value is None or not sigma > 0 or not math.isfinite(sigma):
            return None
        return (self.value - p.mean) / sigma


def coverage(z: Sequence[float], level: float) -> float | None:
    """Fraction of ``|z|`` inside the central ``level`` interval (``None`` for no z)."""
    if not z:
        return None
    k = half_width(level)
    return sum(abs(v) <= k for v in z) / len(z)


def summarize(z: Sequence[float], levels: Sequence[float] = LEVELS) -> dict[str, Any]:
    """Count, mean and RMS of ``z`` and the coverage of each central interval."""
    n = len(z)
    return {
        "count": n,
        "mean_z": sum(z) / n if n else None,
        "rms_z": math.sqrt(sum(v * v for v in z) / n) if n else None,
        "coverage": {f"{level:g}": coverage(z, level) for level in levels},
    }


def reliability(z: Sequence[float], levels: Sequence[float] = DIAGRAM_LEVELS) -> list[tuple[float, float]]:
    """The reliability diagram's points: (expected, observed) coverage per level."""
    return [(level, cov) for level in levels if (cov := coverage(z, level)) is not None]


def fit_scale(z: Sequence[float], method: Method, min_count: int = MIN_COUNT) -> float:
    """The factor on the predictive std that ``method`` fits to ``z`` (1 below ``min_count``)."""
    if method not in METHODS:
        raise ValueError(f"calibration must be one of {list(METHODS)}, got {method!r}")
    n = len(z)
    if method == "none" or n < max(min_count, 1):
        return 1.0
    if method == "scale":
        return math.sqrt(sum(v * v for v in z) / n)
    ranked = sorted(abs(v) for v in z)
    rank = min(n, math.ceil((n + 1) * CONFORMAL_LEVEL))
    return ranked[rank - 1] / half_width(CONFORMAL_LEVEL)


def scores(points: Iterable[CalibrationPoint], std: Std) -> list[float]:
    """The measured points' z-scores against ``std``."""
    return [z for p in points if (z := p.z(std)) is not None]


def current_scales(
    points: Sequence[CalibrationPoint], objectives: Sequence[str], method: Method, min_count: int = MIN_COUNT
) -> dict[str, float]:
    """Per objective, the factor fitted to every predictive z-score known now."""
    return {
        name: fit_scale(scores((p for p in points if p.property == name), "predictive"), method, min_count)
        for name in objectives
    }


def prequential_z(
    points: Sequence[CalibrationPoint], method: Method, min_count: int = MIN_COUNT
) -> list[float]:
    """Predictive z-scores as a recalibration would have made them, each with the factor fitted
    to the points of earlier cycles only (of the same objective): what ``method`` would have
    achieved in this campaign, without looking ahead."""
    out: list[float] = []
    for name in sorted({p.property for p in points}):
        mine = sorted((p for p in points if p.property == name), key=lambda p: (p.cycle, p.evaluation_id))
        for cycle in sorted({p.cycle for p in mine}):
            earlier = scores((p for p in mine if p.cycle < cycle), "predictive")
            s = fit_scale(earlier, method, min_count)
            out.extend(z / s for z in scores((p for p in mine if p.cycle == cycle), "predictive"))
    return out


def prequential_scores(z: Sequence[float], method: Method, min_count: int = MIN_COUNT) -> list[float]:
    """``z`` in the order measured, each divided by the factor ``method`` fits to the scores
    before it: a recalibration's scores on a stream without cycles (an on-the-fly run's oracle
    calls), without looking ahead."""
    return [v / fit_scale(z[:i], method, min_count) for i, v in enumerate(z)]


def calibration_report(
    points: Sequence[CalibrationPoint],
    objectives: Sequence[str],
    method: Method,
    min_count: int = MIN_COUNT,
    scope: Scope = "all",
) -> dict[str, Any]:
    """The campaign's calibration, JSON-ready: per objective the summary of the latent, the
    predictive and the recalibrated (as the stopping rules used it) z-scores, its reliability
    diagram, and the factor the next decision uses; and which std each kind of decision
    judges by (``std_used``, ``decisions_use`` in one line).
    """
    scales = current_scales(points, objectives, method, min_count)
    per_objective: dict[str, Any] = {}
    for name in objectives:
        mine = [p for p in points if p.property == name]
        per_objective[name] = {
            "predictions": len(mine),
            **{std: summarize(scores(mine, std)) for std in ("latent", "predictive", "recalibrated")},
            "reliability": {std: reliability(scores(mine, std)) for std in ("latent", "predictive")},
            "next_std_scale": scales[name],
        }
    used = std_used(method, scope, scales)
    return {
        "method": method,
        "applies_to": scope,
        "min_count": min_count,
        "std_used": used,
        "decisions_use": f"stopping rules: {used['stopping']}; acquisition: {used['acquisition']}",
        "objectives": per_objective,
    }


def std_used(method: Method, scope: Scope, scales: Mapping[str, float]) -> dict[str, str]:
    """Which std each kind of decision judges by, in words: ``stopping`` (the surrogate-based
    stopping rules: a measurement's distribution) and ``acquisition`` (the latent function's)."""
    factors = ", ".join(f"{name} x {s:.3g}" for name, s in scales.items())
    recalibrated = f"recalibrated by {method}: {factors}"
    if method == "none":
        recalibrated = "not recalibrated"
    acquisition = recalibrated if scope == "all" else "not recalibrated"
    return {
        "stopping": f"predictive std (with the fitted noise), {recalibrated}",
        "acquisition": f"latent std (the model's own), {acquisition}",
    }


def describe_summary(summary: Mapping[str, Any]) -> str:
    """One line: ``90% interval covers 0.82 of 40; RMS z 1.31`` (``—`` without points)."""
    if not summary["count"]:
        return "—"
    cov = summary["coverage"].get("0.9")
    return f"90% interval covers {cov:.2f} of {summary['count']}; RMS z {summary['rms_z']:.2f}"


def plot_reliability(
    path: str | Path | IO[bytes], curves: Mapping[str, Sequence[tuple[float, float]]], title: str = ""
) -> None:
    """Plot observed against expected coverage (one line per curve) with the diagonal.

    Args:
        path: Image file (or binary stream) to write a PNG to.
        curves: ``label -> [(expected, observed), ...]`` as :func:`reliability` gives them.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for label, points in curves.items():
        if points:
            ax.plot([e for e, _ in points], [o for _, o in points], marker="o", markersize=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected coverage of the central interval")
    ax.set_ylabel("observed coverage")
    ax.set_title(title or "reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
