"""What the benchmark's walkers went through: held-out frames, miss checks, RDF frames, errors.

A :class:`Trajectory` observes walkers through their ``on_step`` hook (after every step their
guards let through, before the loop decides whether to call the oracle).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from loop.otf import Walker
from surrogates.mlip import Frame, MLIPCommittee, force_error

CHECK_EVERY = 10
"""Committee variants: every this many MD steps, the frame is checked against the oracle's calculator."""
HELD_OUT_EVERY = 20
"""Ground truth: every this many MD steps, the frame is held out."""
RDF_MAX_A = 5.0
RDF_BIN_A = 0.05


@dataclass
class MissCheck:
    """One frame of a committee variant checked against the oracle's calculator.

    Args:
        walker: The walker's name.
        step: Its MD step.
        error_ev_per_a: Force error of the committee's mean forces, as the loop measures it against
            its tolerance (:func:`~surrogates.mlip.force_error`: RMS over atoms, eV/Å).
        uncertainty_ev_per_a: The committee's uncertainty on the frame (eV/Å).
        largest_error_ev_per_a: Largest per-atom force error (eV/Å).
        called: Whether the loop called the oracle on this step.
    """

    walker: str
    step: int
    error_ev_per_a: float
    uncertainty_ev_per_a: float
    largest_error_ev_per_a: float
    called: bool = False


@dataclass
class _Records:
    """One walker's share of a :class:`Trajectory`, in the order it stepped."""

    rdf_frames: list[Atoms] = field(default_factory=list)
    held_out: list[Frame] = field(default_factory=list)
    checks: list[MissCheck] = field(default_factory=list)
    in_run: list[tuple[np.ndarray, float]] = field(default_factory=list)


@dataclass
class Trajectory:
    """What a variant's walkers went through: frames for the RDF, held-out frames, checks.

    With ``reference`` (the ground truth's held-out frames), each one is also predicted by the
    committee that drives the same walker at the same step (``in_run``): how good the potential
    the MD ran on was, there and then, rather than the run's final potential.

    Walkers step in threads; each keeps its own records, and the trajectory lists them walker by
    walker (by name), so sums and ``checks.csv`` do not depend on how the threads interleaved.
    """

    calculator: Callable[[], BaseCalculator]
    tolerance_ev_per_a: float = math.inf
    check: bool = False
    hold_out: bool = False
    reference: dict[str, Frame] = field(default_factory=dict)
    by_walker: dict[str, _Records] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, walker: Walker) -> None:
        """Record ``walker``'s current frame (its ``on_step`` hook, after each accepted step; thread-safe)."""
        atoms, step = walker.atoms, walker.step
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        with self._lock:
            records = self.by_walker.setdefault(walker.spec.name, _Records())
        key = f"{walker.spec.name}:{step}"
        if step > walker.spec.steps // 2:
            records.rdf_frames.append(frame)
        if self.hold_out and step % HELD_OUT_EVERY == 0:
            held_out = Frame.from_atoms(frame, atoms.get_potential_energy(), atoms.get_forces(), id=key)
            records.held_out.append(held_out)
        if key in self.reference:
            records.in_run.append(frame_errors(atoms.calc.committee, self.reference[key]))
        if self.check and step % CHECK_EVERY == 0:
            checked = frame.copy()
            checked.calc = self.calculator()
            predicted, true = atoms.get_forces(), checked.get_forces()
            u = atoms.calc.results["committee"].uncertainty
            largest = float(np.linalg.norm(predicted - true, axis=1).max())
            records.checks.append(
                MissCheck(walker.spec.name, step, force_error(predicted, true), float(u), largest)
            )

    def _walker_by_walker(self, kind: str) -> list[Any]:
        return [item for name in sorted(self.by_walker) for item in getattr(self.by_walker[name], kind)]

    @property
    def rdf_frames(self) -> list[Atoms]:
        return self._walker_by_walker("rdf_frames")

    @property
    def held_out(self) -> list[Frame]:
        return self._walker_by_walker("held_out")

    @property
    def checks(self) -> list[MissCheck]:
        return self._walker_by_walker("checks")

    @property
    def in_run(self) -> list[tuple[np.ndarray, float]]:
        return self._walker_by_walker("in_run")

    def mark_called(self, labelled: set[tuple[str, int]]) -> None:
        """The loop sent these (walker, step) frames to the oracle: checks there were no misses."""
        for check in self.checks:
            check.called = (check.walker, check.step) in labelled

    @property
    def misses(self) -> int:
        return sum(c.error_ev_per_a > self.tolerance_ev_per_a and not c.called for c in self.checks)


# --- radial distribution -----------------------------------------------------------------------


def radial_distribution(
    frames: Sequence[Atoms], r_max_a: float = RDF_MAX_A, bin_a: float = RDF_BIN_A
) -> tuple[np.ndarray, np.ndarray]:
    """The radial distribution function averaged over ``frames``.

    Every pair within ``r_max_a``, periodic images included, is counted (ASE's neighbour list),
    so ``r_max_a`` may exceed half the cell.

    Args:
        frames: Structures of one system (same atom count; the cell may change).
        r_max_a: Largest distance (Å).
        bin_a: Bin width (Å).

    Returns:
        ``b`` bin centres (Å) and ``b`` values of g(r) (1 for an ideal gas).

    Raises:
        ValueError: no frames.
    """
    from ase.neighborlist import neighbor_list

    if not frames:
        raise ValueError("no frames to compute a radial distribution function from")
    edges = np.arange(0.0, r_max_a + 0.5 * bin_a, bin_a)
    shells = 4.0 / 3.0 * np.pi * np.diff(edges**3)
    g = np.zeros(edges.size - 1)
    for atoms in frames:
        n = len(atoms)
        distances = neighbor_list("d", atoms, r_max_a)  # ordered pairs: each pair twice
        g += np.histogram(distances, edges)[0] / (n * (n / atoms.get_volume()) * shells)
    return 0.5 * (edges[1:] + edges[:-1]), g / len(frames)


def rdf_difference(g: np.ndarray, reference: np.ndarray) -> float:
    """``sum |g - reference| / sum reference`` (0: identical; NaN when the reference is empty)."""
    total = float(np.sum(reference))
    return float(np.abs(g - reference).sum() / total) if total > 0 else math.nan


# --- committee errors on labelled frames ------------------------------------------------------


def held_out_errors(committee: MLIPCommittee, frames: Sequence[Frame]) -> tuple[float, float]:
    """The committee's mean-prediction errors on labelled frames.

    Returns:
        Force RMSE over every component (eV/Å) and energy MAE per atom (eV/atom).
    """
    return summarize_errors([frame_errors(committee, frame) for frame in frames])


def frame_errors(committee: MLIPCommittee, frame: Frame) -> tuple[np.ndarray, float]:
    """The committee's mean-prediction force errors (every component) and energy error per atom."""
    prediction = committee.predict(frame.atoms())
    forces = (prediction.forces.mean(axis=0) - frame.forces).reshape(-1)
    return forces, abs(float(prediction.energy.mean()) - frame.energy) / len(frame.numbers)


def summarize_errors(errors: Sequence[tuple[np.ndarray, float]]) -> tuple[float, float]:
    """Force RMSE over every component and mean energy error per atom (NaN when empty)."""
    if not errors:
        return math.nan, math.nan
    forces = np.concatenate([f for f, _ in errors])
    return float(np.sqrt(np.mean(forces**2))), float(np.mean([e for _, e in errors]))
