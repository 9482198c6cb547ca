"""Pre-relaxation: a cheap potential relaxes a structure before DFT starts from it.

As atomate2 does, a universal machine-learned potential (CHGNet, MACE-MP...) takes a
candidate most of the way to its minimum in seconds, so the costly DFT relaxation needs
fewer ionic steps. The oracle layer cannot load those potentials itself (``surrogates`` is a
sibling package it must not import): the composition root loads one and hands it over.

The pre-relaxation is bounded (``steps``) and never decisive: a structure it leaves
unconverged still goes to DFT, and one it wrecks (overlapping atoms, energies that are not
finite) is dropped so that DFT starts from the candidate as given.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from oracles.dft_job import min_distance, relax


@dataclass
class PreRelaxation:
    """Relaxes structures with a cheap calculator.

    Args:
        calculator: The potential (an ASE calculator, e.g. a universal one).
        name: The potential's name, for the metadata.
        optimizer: An ASE optimizer (``FIRE``, ``BFGS``...).
        fmax_ev_per_a: Force criterion (eV/Å), looser than the DFT one.
        steps: Most optimizer steps.
        relax_cell: Relax the cell too (``FrechetCellFilter``).
        min_distance_a: A result with atoms closer than this (Å) is dropped.
    """

    calculator: BaseCalculator
    name: str
    optimizer: str = "FIRE"
    fmax_ev_per_a: float = 0.1
    steps: int = 300
    relax_cell: bool = True
    min_distance_a: float = 0.5
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def relax(self, atoms: Atoms) -> tuple[Atoms, dict[str, Any]]:
        """Relax a copy of ``atoms``; one structure at a time (calculators hold state).

        Returns:
            The structure DFT should start from (the relaxed one, or ``atoms`` when the
            relaxation wrecked it) and its record: ``model``, ``steps``, ``wall_s``,
            ``converged``, ``used`` and, when not used, ``reason``.
        """
        relaxed = atoms.copy()
        start = time.perf_counter()
        with self._lock:
            relaxed.calc = self.calculator
            n_steps, converged = relax(
                relaxed, self.optimizer, self.fmax_ev_per_a, self.steps, self.relax_cell
            )
            energy = float(relaxed.get_potential_energy())
        record: dict[str, Any] = {
            "model": self.name,
            "steps": n_steps,
            "wall_s": time.perf_counter() - start,
            "converged": converged,
            "used": True,
        }
        relaxed.calc = None
        distance, _, _ = min_distance(relaxed)
        if not math.isfinite(energy) or not np.isfinite(relaxed.positions).all():
            reason = f"energy {energy} or positions are not finite"
        elif distance < self.min_distance_a:
            reason = f"atoms {distance:.3f} Å apart, closer than min_distance_a = {self.min_distance_a} Å"
        else:
            return relaxed, record
        return atoms, record | {"used": False, "reason": reason}

    def as_dict(self) -> dict[str, Any]:
        """The settings, for provenance."""
        return {
            "model": self.name,
            "optimizer": self.optimizer,
            "fmax_ev_per_a": self.fmax_ev_per_a,
            "steps": self.steps,
            "relax_cell": self.relax_cell,
        }
