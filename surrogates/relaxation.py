"""Relaxing candidates with a model before they are scored.

A candidate's formation energy is that of its *relaxed* structure (what the DFT oracle
measures), so a surrogate that scores structures relaxes them first, with its own potential or
a universal one. :class:`RelaxedCandidates` relaxes each candidate on first access and keeps the
result, so thousands of candidates are relaxed once per fitted model, not once per question.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
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


class RelaxedCandidates(Sequence[Atoms]):
    """Candidates by key, relaxed on first access with ``calculator`` and kept.

    Args:
        start: The structure a key starts from (``key -> Atoms``).
        count: How many keys there are (``() -> int``; the table may grow).
        calculator: The potential that relaxes them; ``None`` keeps ``start``'s structures.
        settings: How far they are relaxed.
    """

    def __init__(
        self,
        start: Callable[[int], Atoms],
        count: Callable[[], int],
        calculator: BaseCalculator | None,
        settings: RelaxSettings,
    ) -> None:
        self.start, self._count = start, count  # not `count`: Sequence.count
        self.calculator, self.settings = calculator, settings
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

    def __iter__(self) -> Iterator[Atoms]:
        return (self[k] for k in range(len(self)))

    @property
    def relaxed(self) -> int:
        """How many candidates have been relaxed (or kept) so far."""
        return len(self._relaxed)
