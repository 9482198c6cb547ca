"""Prediction results of a committee, and the force error they are compared by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CommitteePrediction:
    """Every member's prediction for one structure.

    Args:
        energy: ``s`` total energies (eV).
        forces: ``s x n x 3`` forces (eV/Å).
        stress: ``s x 6`` Voigt stresses (eV/Å³).
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray

    @property
    def forces_std(self) -> np.ndarray:
        """``n``: per atom, the root-mean-square deviation of the members' force vectors
        from their mean (eV/Å)."""
        deviation = self.forces - self.forces.mean(axis=0)
        return np.sqrt((deviation**2).sum(axis=-1).mean(axis=0))

    @property
    def uncertainty(self) -> float:
        """How unsure the committee is of the frame: the root mean square over atoms of
        ``forces_std`` (eV/Å), on the same footing as :func:`force_error`."""
        return float(np.sqrt(np.mean(self.forces_std**2)))


def force_error(predicted: np.ndarray, true: np.ndarray) -> float:
    """The force error of a frame: root mean square over atoms of the error vectors' norms
    (eV/Å), i.e. ``sqrt(3)`` times the RMSE over force components."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(predicted) - np.asarray(true)) ** 2, axis=-1))))


def force_z_scores(prediction: CommitteePrediction, true: np.ndarray) -> np.ndarray:
    """``3n'``: each force component's error of the members' mean, over the committee's spread
    per component (``forces_std / sqrt(3)`` of its atom): the z-scores whose central intervals a
    calibrated committee's spread covers as a normal's do. Atoms with no spread are left out.

    Args:
        prediction: The committee's prediction for a frame.
        true: ``n x 3`` true forces there (eV/Å).
    """
    sigma = prediction.forces_std / np.sqrt(3.0)
    error = prediction.forces.mean(axis=0) - np.asarray(true)
    spread = sigma > 0
    return (error[spread] / sigma[spread, None]).reshape(-1)
