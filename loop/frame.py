"""Labelled frames: a structure with its energy, forces and stress, the data MLIPs learn from.

A :class:`Frame` is immutable and needs neither torch nor a calculator, so oracles, the ledger,
the extxyz export and the MACE committee can pass it around. It round-trips through
:meth:`Frame.as_dict` / :meth:`Frame.from_dict` (``structure``, ``energy_ev``, ``forces_ev_per_a``,
``stress_ev_per_a3``; what a result's ``frame`` holds and the ledger's ``evaluations.frame`` column
stores), and through
ASE ``Atoms`` with the labels frozen on by a ``SinglePointCalculator`` (:meth:`Frame.atoms` /
:meth:`Frame.from_labelled_atoms`), which is what extxyz files carry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

_VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])  # xx yy zz yz xz xy of a 3 x 3 matrix
_LABELS = ("energy_ev", "forces_ev_per_a")
_STRUCTURE = ("cell", "symbols", "positions", "pbc")


def stress_voigt(stress: np.ndarray) -> np.ndarray:
    """``6``: the Voigt stress ``xx yy zz yz xz xy`` of a ``3 x 3`` (or already Voigt) stress.

    Raises:
        ValueError: ``stress`` has neither 6 nor 9 entries.
    """
    stress = np.asarray(stress, dtype=float).reshape(-1)
    if stress.shape == (9,):
        stress = stress.reshape(3, 3)[_VOIGT]
    if stress.shape != (6,):
        raise ValueError(f"stress has shape {stress.shape}, expected 6 (Voigt) or 3 x 3")
    return stress


def stress_matrix(voigt: np.ndarray) -> np.ndarray:
    """``3 x 3``: the symmetric stress of a Voigt stress ``xx yy zz yz xz xy``."""
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def structure_as_dict(atoms: Atoms) -> dict[str, Any]:
    """A JSON-able structure: ``cell`` (3 x 3, Å), ``symbols``, ``positions`` (n x 3, Å), ``pbc``."""
    return {
        "cell": np.asarray(atoms.cell).tolist(),
        "symbols": atoms.get_chemical_symbols(),
        "positions": atoms.positions.tolist(),
        "pbc": [bool(p) for p in atoms.pbc],
    }


def structure_from_dict(values: Mapping[str, Any]) -> Atoms:
    """The inverse of :func:`structure_as_dict`.

    Raises:
        ValueError: a key is missing.
    """
    missing = [key for key in _STRUCTURE if key not in values]
    if missing:
        raise ValueError(f"a structure needs {', '.join(_STRUCTURE)}; missing {', '.join(missing)}")
    return Atoms(
        symbols=values["symbols"], positions=values["positions"], cell=values["cell"], pbc=values["pbc"]
    )


def _frozen(values: Any, dtype: type = float) -> np.ndarray:
    array: np.ndarray = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Frame:
    """One labelled structure, in plain read-only arrays (cheap to send to a training process).

    Args:
        id: A stable id (the ledger's candidate id, or a hash of positions and cell).
        numbers: ``n`` atomic numbers.
        positions: ``n x 3`` positions (Å).
        cell: ``3 x 3`` cell (Å).
        pbc: Periodicity along the three cell vectors.
        energy: Total energy (eV).
        forces: ``n x 3`` forces (eV/Å).
        stress: Voigt stress ``xx yy zz yz xz xy`` (eV/Å³; a ``3 x 3`` one is converted), or ``None``.

    Raises:
        ValueError: an array's shape does not fit the structure, or a label is not finite.
    """

    id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None

    def __post_init__(self) -> None:
        numbers = _frozen(self.numbers, int).reshape(-1)
        n = len(numbers)
        arrays = {"positions have": (n, 3), "cell has": (3, 3), "forces have": (n, 3)}
        for subject, shape in arrays.items():
            name = subject.split()[0]
            value = _frozen(getattr(self, name))
            if value.shape != shape:
                raise ValueError(f"{subject} shape {value.shape}, expected {shape}")
            object.__setattr__(self, name, value)
        stress = None if self.stress is None else _frozen(stress_voigt(self.stress))
        labels = [np.array([self.energy], dtype=float), self.forces] + ([] if stress is None else [stress])
        if not all(np.isfinite(x).all() for x in labels):
            raise ValueError("a label (energy, forces or stress) is not finite")
        pbc = tuple(bool(p) for p in np.broadcast_to(self.pbc, 3))
        for name, normalised in {
            "numbers": numbers,
            "pbc": pbc,
            "energy": float(self.energy),
            "stress": stress,
        }.items():
            object.__setattr__(self, name, normalised)
        object.__setattr__(self, "id", str(self.id))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        arrays = ("numbers", "positions", "cell", "forces")
        return (
            (self.id, self.pbc, self.energy) == (other.id, other.pbc, other.energy)
            and all(np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays)
            and (
                np.array_equal(self.stress, other.stress)
                if self.stress is not None and other.stress is not None
                else self.stress is other.stress  # equal only when both are None
            )
        )

    @classmethod
    def from_atoms(
        cls,
        atoms: Atoms,
        energy: float,
        forces: np.ndarray,
        stress: np.ndarray | None = None,
        id: str | None = None,
    ) -> Frame:
        """A frame from a structure and its labels (``id`` defaults to a hash of positions and cell).

        Raises:
            ValueError: a label is not finite or its shape does not fit the structure.
        """
        positions = np.asarray(atoms.get_positions(), dtype=float)
        cell = np.asarray(atoms.cell, dtype=float)
        if id is None:
            id = hashlib.sha256(positions.round(6).tobytes() + cell.round(6).tobytes()).hexdigest()[:16]
        return cls(id, atoms.numbers, positions, cell, tuple(atoms.pbc), energy, forces, stress)

    @classmethod
    def from_labelled_atoms(cls, atoms: Atoms, id: str | None = None) -> Frame:
        """The inverse of :meth:`atoms`: a frame from a structure whose calculator holds its
        labels (a ``SinglePointCalculator``, as extxyz files give); computes nothing.

        Raises:
            ValueError: the calculator holds no energy or no forces, or a label is bad.
        """
        results = {} if atoms.calc is None else atoms.calc.results
        missing = [key for key in ("energy", "forces") if key not in results]
        if missing:
            raise ValueError(
                f"atoms carry no {' or '.join(missing)} label (no SinglePointCalculator with them)"
            )
        return cls.from_atoms(atoms, results["energy"], results["forces"], results.get("stress"), id=id)

    def atoms(self) -> Atoms:
        """The structure, its labels frozen on by a ``SinglePointCalculator`` (Voigt stress)."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        labels = {"energy": self.energy, "forces": np.array(self.forces)}
        if self.stress is not None:
            labels["stress"] = np.array(self.stress)
        atoms.calc = SinglePointCalculator(atoms, **labels)
        return atoms

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``id``, ``structure``, ``energy_ev``, ``forces_ev_per_a``, ``stress_ev_per_a3``."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        return {
            "id": self.id,
            "structure": structure_as_dict(atoms),
            "energy_ev": self.energy,
            "forces_ev_per_a": self.forces.tolist(),
            "stress_ev_per_a3": None if self.stress is None else self.stress.tolist(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Frame:
        """The inverse of :meth:`as_dict`. Other keys are ignored; without ``id`` the id is a
        hash of positions and cell.

        Raises:
            ValueError: a key is missing, or a label is not finite or does not fit the structure.
        """
        missing = [key for key in ("structure", *_LABELS) if key not in values]
        if missing:
            raise ValueError(
                f"a labelled frame needs structure, {', '.join(_LABELS)}; missing {', '.join(missing)}"
            )
        atoms = structure_from_dict(values["structure"])
        stress = values.get("stress_ev_per_a3")
        return cls.from_atoms(
            atoms, values["energy_ev"], values["forces_ev_per_a"], stress, id=values.get("id")
        )
