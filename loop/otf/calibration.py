"""The online threshold calibration: error/spread ratios and the miss-rate threshold choice.

Each oracle call measures the true error ``e`` of the frame it labels (force error, root mean
square over atoms, of the committee *before* it learns the frame; see
:func:`~surrogates.mlip.force_error`). The ratios ``e / u`` say how far the committee's spread
``u`` understates the error. The miss rate of a threshold ``t`` — the share of steps whose error
exceeds the tolerance without a call — is estimated over the recent steps' uncertainties as
``mean(u_s <= t and P(e/u > tol/u_s))`` with ``P`` from the measured ratios; the threshold is the
largest ``t`` whose estimate meets the target miss rate, capped at ``tolerance / median(e / u)``
so that a frame whose spread predicts a typical error above the tolerance is always labelled.

Until ``min_calibration_calls`` ratios are in, the threshold is the initial guess.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loop.otf.settings import OTFSettings


@dataclass
class Calibration:
    """The threshold, from measured error/uncertainty ratios and recent uncertainties."""

    settings: OTFSettings
    threshold: float = 0.0
    ratios: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)
    force_z: list[list[float]] = field(default_factory=list)
    """Per oracle call, its force components' z-scores (for coverage reports, not the threshold)."""

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            self.threshold = self.settings.initial_threshold_ev_per_a
        self.recent = deque(self.recent, maxlen=self.settings.window_steps)

    @property
    def burning_in(self) -> bool:
        """Whether the threshold is still the initial guess of a calibrating run (too few ratios)."""
        return self.settings.calibrate and len(self.ratios) < self.settings.min_calibration_calls

    def observe_step(self, uncertainty: float) -> None:
        self.recent.append(uncertainty)

    def observe_call(self, uncertainty: float, error: float, force_z: Sequence[float] = ()) -> None:
        """Record what one oracle call measured: the frame's uncertainty and true error (and
        its force components' z-scores)."""
        self.errors.append(error)
        if uncertainty > 0:
            self.ratios.append(error / uncertainty)
        self.force_z.append(list(force_z))

    def estimated_miss_rate(self, threshold: float) -> float:
        """The share of recent steps expected to exceed the tolerance below ``threshold``."""
        if not self.recent or not self.ratios:
            return 0.0
        u = np.asarray(self.recent)
        ratios = np.sort(np.asarray(self.ratios))
        below = u[u <= threshold]
        if below.size == 0:
            return 0.0
        needed = self.settings.tolerance_ev_per_a / np.maximum(below, 1e-12)
        exceed = 1.0 - np.searchsorted(ratios, needed, side="right") / ratios.size
        return float(exceed.sum() / u.size)

    def update(self) -> float:
        """Re-derive the threshold (when calibrating and enough calls are in); returns it.

        The threshold is the largest ``t`` whose estimated miss rate meets the target, but no
        higher than ``tolerance / median(e / u)``: a frame whose spread predicts a typical
        error above the tolerance is always labelled, however rare such frames were so far.
        """
        s = self.settings
        if not s.calibrate or len(self.ratios) < s.min_calibration_calls or not self.recent:
            return self.threshold
        low, high = s.threshold_bounds
        high = min(high, s.tolerance_ev_per_a / max(float(np.median(self.ratios)), 1e-12))
        candidates = np.unique(np.clip(np.concatenate([np.asarray(self.recent), [high]]), low, high))
        best = low
        for t in candidates:  # the miss rate grows with t: keep the largest t within target
            if self.estimated_miss_rate(float(t)) <= s.target_miss_rate:
                best = float(t)
            else:
                break
        self.threshold = max(best, low)
        return self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "ratios": self.ratios,
            "errors": self.errors,
            "recent": list(self.recent),
            "force_z": self.force_z,
        }

    @classmethod
    def from_dict(cls, settings: OTFSettings, values: Mapping[str, Any]) -> Calibration:
        return cls(
            settings,
            float(values["threshold"]),
            list(values["ratios"]),
            list(values["errors"]),
            deque(values["recent"]),
            [list(z) for z in values.get("force_z", [])],  # absent from checkpoints before it
        )
