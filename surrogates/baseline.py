"""A pretrained universal potential as the committee's starting point (Δ-learning).

With a baseline, committee members learn the *difference* between the oracle and the
baseline, and predict ``baseline + member``: before any data the committee already knows what
the pretrained potential knows, and a few labels correct it towards the oracle. The spread
(uncertainty) is the members' alone, since they share the baseline.

``"chgnet"`` is CHGNet, whose pretrained weights ship inside its wheel and load offline
(``pip install chgnet``). Any other ASE calculator works by import path (``"module:Class"``).
mace-torch's foundation models are downloaded at run time, so they are not offered.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import replace
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from loop.frame import Frame
from surrogates.base import SurrogateError

_NAMED = {"chgnet": "chgnet.model.dynamics:CHGNetCalculator"}


class Baseline:
    """A universal potential whose predictions the committee corrects.

    Args:
        name: ``"chgnet"`` or an ASE calculator's import path ``"module:Class"``.
        options: Keyword arguments of the calculator.

    Raises:
        SurrogateError: the calculator cannot be imported or built.
    """

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        self.name = name
        path = _NAMED.get(name, name)
        module, _, attribute = path.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
            defaults = {"use_device": "cpu"} if name == "chgnet" else {}
            self.calculator: BaseCalculator = cls(**{**defaults, **(options or {})})
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            hint = " (pip install chgnet)" if name == "chgnet" else ""
            raise SurrogateError(f"baseline {name!r} cannot be built{hint}: {exc}") from exc
        self._lock = threading.Lock()  # one calculator, walkers in threads
        self._cache: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}

    def predict(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), ``n x 3`` forces (eV/Å) and Voigt stress (eV/Å³) of ``atoms``."""
        copy = atoms.copy()
        with self._lock:
            copy.calc = self.calculator
            energy = float(copy.get_potential_energy())
            forces = np.asarray(copy.get_forces(), dtype=float)
            stress = np.asarray(copy.get_stress(), dtype=float) if all(copy.pbc) else np.zeros(6)
        return energy, forces, stress

    def residual(self, frame: Frame) -> Frame:
        """``frame`` with the baseline's prediction subtracted from its labels (cached by id)."""
        if frame.id not in self._cache:
            self._cache[frame.id] = self.predict(frame.atoms())
        energy, forces, stress = self._cache[frame.id]
        return replace(
            frame,
            energy=frame.energy - energy,
            forces=frame.forces - forces,
            stress=None if frame.stress is None else frame.stress - stress,
        )
