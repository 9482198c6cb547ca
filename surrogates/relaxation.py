"""Relaxing candidates with a model before they are scored.

A candidate's formation energy is that of its *relaxed* structure (what the DFT oracle
measures), so a surrogate that scores structures relaxes them first, with its own potential or
a universal one. :class:`RelaxedCandidates` relaxes each candidate on first access and keeps the
result, so thousands of candidates are relaxed once per fitted model, not once per question.
A model that computes forces for many structures in one call relaxes them together
(:func:`relax_many`, ASE's FIRE run side by side), which is what makes screening a pool of
10^4 candidates with an MLIP committee affordable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

log = logging.getLogger("alloop.surrogates")


@dataclass(frozen=True)
class RelaxSettings:
    """How a model relaxes a candidate.

    Args:
        steps: Optimizer steps at most (0: no relaxation).
        fmax_ev_per_a: Stop once every force is below this (eV/Å).
        cell: Relax the cell too (``FrechetCellFilter``), not only the positions.
    """

    steps: int = 20
    fmax_ev_per_a: float = 0.05
    cell: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.fmax_ev_per_a > 0:
            raise ValueError(f"fmax_ev_per_a must be positive, got {self.fmax_ev_per_a}")


def relax(atoms: Atoms, calculator: BaseCalculator, settings: RelaxSettings) -> Atoms:
    """A relaxed copy of ``atoms`` (FIRE), without a calculator attached.

    A relaxation that fails or leaves non-finite positions gives back the starting structure:
    an unrelaxed score beats no score.
    """
    start = atoms.copy()
    start.calc = None
    if settings.steps == 0:
        return start
    moving = atoms.copy()
    moving.calc = calculator
    target = FrechetCellFilter(moving) if settings.cell else moving
    try:
        FIRE(target, logfile=None).run(fmax=settings.fmax_ev_per_a, steps=settings.steps)
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        log.warning("relaxation of %s failed (%s); scoring it unrelaxed", start.get_chemical_formula(), exc)
        return start
    if not (np.isfinite(moving.positions).all() and np.isfinite(np.asarray(moving.cell)).all()):
        return start
    moving.calc = None
    return moving


BatchForces = Callable[[Sequence[Atoms]], list[np.ndarray]]
"""Forces (``n_i x 3``, eV/Å) of many structures from one model call."""


@dataclass
class _FIREState:
    """One structure's state in ASE's FIRE (``ase.optimize.FIRE``, defaults, no downhill check)."""

    atoms: Atoms
    velocity: np.ndarray | None = None
    dt: float = 0.1
    a: float = 0.1
    steps_downhill: int = 0
    steps: int = 0
    done: bool = False
    failed: bool = False

    MAXSTEP = 0.2
    DTMAX, NMIN, FINC, FDEC, ASTART, FA = 1.0, 5, 1.1, 0.5, 0.1, 0.99

    def step(self, forces: np.ndarray) -> None:
        """Move the atoms one FIRE step along ``forces`` (``n x 3``), as ASE's FIRE does."""
        f = forces.reshape(-1)
        if self.velocity is None:
            self.velocity = np.zeros_like(f)
        else:
            vf = float(np.vdot(f, self.velocity))
            if vf > 0.0:
                norm_v, norm_f = np.sqrt(np.vdot(self.velocity, self.velocity)), np.sqrt(np.vdot(f, f))
                self.velocity = (1.0 - self.a) * self.velocity + self.a * f / norm_f * norm_v
                if self.steps_downhill > self.NMIN:
                    self.dt = min(self.dt * self.FINC, self.DTMAX)
                    self.a *= self.FA
                self.steps_downhill += 1
            else:
                self.velocity[:] = 0.0
                self.a, self.dt, self.steps_downhill = self.ASTART, self.dt * self.FDEC, 0
        self.velocity += self.dt * f
        dr = self.dt * self.velocity
        norm = float(np.sqrt(np.vdot(dr, dr)))
        if norm > self.MAXSTEP:
            dr *= self.MAXSTEP / norm
        self.atoms.positions = self.atoms.positions + dr.reshape(-1, 3)
        self.steps += 1


def _largest_force(forces: np.ndarray) -> float:
    return float(np.sqrt((forces**2).sum(axis=1).max(initial=0.0)))


def relax_many(structures: Sequence[Atoms], forces: BatchForces, settings: RelaxSettings) -> list[Atoms]:
    """Relaxed copies of ``structures`` (positions only), all moved together: ASE's FIRE on each,
    with one ``forces`` call per step for every structure still moving.

    Each structure follows the path :func:`relax` with ``cell=False`` gives it (same steps and
    convergence test) and stops on its own; one whose forces or positions turn non-finite gives
    back its starting structure, as there.

    Raises:
        ValueError: ``settings`` relax the cell too (that takes :func:`relax`, one by one).
    """
    if settings.cell:
        raise ValueError("relax_many moves positions only; relax the cell with relax(), one by one")
    starts = [atoms.copy() for atoms in structures]
    for atoms in starts:
        atoms.calc = None
    if settings.steps == 0:
        return starts
    states = [_FIREState(atoms.copy()) for atoms in starts]
    while moving := [s for s in states if not s.done]:
        for state, f in zip(moving, forces([s.atoms for s in moving]), strict=True):
            if not np.isfinite(f).all():
                state.done = state.failed = True
            elif _largest_force(f) < settings.fmax_ev_per_a or state.steps >= settings.steps:
                state.done = True  # converged (ASE's test), or out of steps
            else:
                state.step(f)
                state.failed = not np.isfinite(state.atoms.positions).all()
                state.done = state.failed
    failed = [
        start.get_chemical_formula() for start, state in zip(starts, states, strict=True) if state.failed
    ]
    if failed:
        log.warning(
            "relaxation of %d structure(s) failed (%s); scoring them unrelaxed", len(failed), failed[:5]
        )
    return [start if state.failed else state.atoms for state, start in zip(states, starts, strict=True)]


class RelaxedCandidates(Sequence[Atoms]):
    """Candidates by key, relaxed on first access with ``calculator`` and kept.

    Args:
        start: The structure a key starts from (``key -> Atoms``).
        count: How many keys there are (``() -> int``; the table may grow).
        calculator: The potential that relaxes them; ``None`` keeps ``start``'s structures.
        settings: How far they are relaxed.
        batch_forces: The same potential's forces for many structures in one call: with it,
            :meth:`prefetch` relaxes the keys it is given together (positions only).
    """

    def __init__(
        self,
        start: Callable[[int], Atoms],
        count: Callable[[], int],
        calculator: BaseCalculator | None,
        settings: RelaxSettings,
        batch_forces: BatchForces | None = None,
    ) -> None:
        self.start, self._count = start, count  # not `count`: Sequence.count
        self.calculator, self.settings = calculator, settings
        self.batch_forces = batch_forces
        #: Structure-evaluations of ``batch_forces`` so far (one per structure per FIRE step).
        self.force_evaluations = 0
        self._relaxed: dict[int, Atoms] = {}
        self._lock = threading.Lock()  # one calculator

    def __len__(self) -> int:
        return self._count()

    @overload
    def __getitem__(self, key: int) -> Atoms: ...

    @overload
    def __getitem__(self, key: slice) -> Sequence[Atoms]: ...

    def __getitem__(self, key: int | slice) -> Atoms | Sequence[Atoms]:
        if isinstance(key, slice):
            return [self[k] for k in range(*key.indices(len(self)))]
        with self._lock:
            if key not in self._relaxed:
                atoms = self.start(key)
                self._relaxed[key] = (
                    atoms if self.calculator is None else relax(atoms, self.calculator, self.settings)
                )
            return self._relaxed[key]

    def prefetch(self, keys: Iterable[int]) -> None:
        """Relax the ``keys`` not relaxed yet: together where the potential computes forces in
        batches and the cell stays fixed, one by one otherwise (as on first access)."""
        together = self.calculator is not None and self.batch_forces is not None and not self.settings.cell
        with self._lock:
            missing = sorted({k for k in keys if k not in self._relaxed})
            if together and missing:
                relaxed = relax_many([self.start(k) for k in missing], self._counted_forces, self.settings)
                self._relaxed.update(zip(missing, relaxed, strict=True))
        for k in missing:
            self[k]  # relaxed above, or now one by one

    def _counted_forces(self, structures: Sequence[Atoms]) -> list[np.ndarray]:
        assert self.batch_forces is not None
        self.force_evaluations += len(structures)
        return self.batch_forces(structures)

    def snapshot(self) -> dict[int, Atoms]:
        """The candidates relaxed so far, by key (a copy of the table; nothing is relaxed)."""
        with self._lock:
            return dict(self._relaxed)

    def __iter__(self) -> Iterator[Atoms]:
        return (self[k] for k in range(len(self)))

    @property
    def relaxed(self) -> int:
        """How many candidates have been relaxed (or kept) so far."""
        return len(self._relaxed)
