"""Settings of one committee member: a small MACE's architecture and how it trains."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MACESettings:
    """Architecture and training of one committee member.

    The defaults are a small MACE (16 scalar channels, two interactions, body order 3) that
    trains on a CPU in about 25 ms per 30-atom frame and epoch.

    Args:
        r_max: Cut-off radius (Å).
        channels: Scalar channels of the hidden features.
        max_l: Largest angular momentum of the hidden features (0: scalars only).
        correlation: Body order of the messages minus one.
        interactions: Message-passing layers.
        dtype: ``"float32"`` (fast) or ``"float64"``.
        learning_rate: Adam's step size when training from scratch.
        warm_learning_rate: Adam's step size when warm-starting. A fresh Adam's first steps move
            every weight by about its step size, so the from-scratch rate would undo much of a
            trained model at every retraining (replaying the frames of one on-the-fly run in order,
            1e-3 instead of 5e-3 gave energy errors of 0.001-0.004 eV/atom instead of 0.012-0.040).
        batch_size: Frames per optimizer step.
        epochs: Passes over the data when training from scratch.
        warm_epochs: Passes over the whole (replayed) data when warm-starting.
        min_steps: Fewest optimizer steps of any fit (small datasets still get trained).
        energy_weight: Loss weight of the energy per atom (eV²).
        forces_weight: Loss weight of the forces (eV²/Å²).
        stress_weight: Loss weight of the stress (eV²/Å⁶); 0 skips the stress.
        bootstrap: Weigh frames per member by Poisson(1) draws (else every member sees all).
    """

    r_max: float = 4.5
    channels: int = 16
    max_l: int = 0
    correlation: int = 2
    interactions: int = 2
    dtype: str = "float32"
    learning_rate: float = 5e-3
    warm_learning_rate: float = 1e-3
    batch_size: int = 4
    epochs: int = 60
    warm_epochs: int = 2
    min_steps: int = 8
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 10.0
    bootstrap: bool = True

    def __post_init__(self) -> None:
        positive = {
            "r_max": self.r_max,
            "channels": self.channels,
            "correlation": self.correlation,
            "interactions": self.interactions,
            "learning_rate": self.learning_rate,
            "warm_learning_rate": self.warm_learning_rate,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
        }
        bad = [f"{k} = {v}" for k, v in positive.items() if not v > 0]
        bad += [
            f"{k} = {v}"
            for k, v in {"warm_epochs": self.warm_epochs, "min_steps": self.min_steps}.items()
            if v < 0
        ]
        bad += [
            f"{k} = {v}"
            for k, v in {
                "energy_weight": self.energy_weight,
                "forces_weight": self.forces_weight,
                "stress_weight": self.stress_weight,
            }.items()
            if not (math.isfinite(v) and v >= 0)
        ]
        if self.max_l not in (0, 1, 2):
            bad.append(f"max_l = {self.max_l} (0, 1 or 2)")
        if self.dtype not in ("float32", "float64"):
            bad.append(f"dtype = {self.dtype!r} ('float32' or 'float64')")
        if bad:
            raise ValueError(f"invalid MACE settings: {', '.join(bad)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MACESettings:
        return cls(**values)
