"""Structure keys: model inputs that name a structure instead of describing it.

A surrogate that looks at the structure itself (the MACE committee relaxes and scores it) needs
from the campaign only *which* structure a model input means. :class:`StructureKeys` is a
structure pool's featurizer whose last feature is a key: the index of the structure in a table
that grows as structures are seen (a pool's candidates get keys in pool order). The surrogate
holds the same table and turns keys back into structures. Given the chemical system, the atomic
fractions come first (:mod:`surrogates.composition`), for the hull-aware acquisitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from pymatgen.core import Structure

from loop.structure_codec import structure_from_params, structure_to_params
from surrogates.composition import atomic_fractions, fraction_names


class StructureKeys:
    """A featurizer of structures into ``n x 1`` keys, and the table that resolves them.

    Structures are equal when their compact canonical forms
    (:func:`~loop.structure_codec.structure_to_params`) are; the table keeps that form only.
    """

    def __init__(self, elements: Sequence[str] | None = None) -> None:
        self.elements = tuple(sorted(elements or ()))
        self._bodies: list[str] = []
        self._keys: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def key(self, structure: Structure) -> int:
        """The key of ``structure`` (a new one if the table has not seen it)."""
        body = str(structure_to_params(structure)["structure"])
        key = self._keys.get(body)
        if key is None:
            key = self._keys[body] = len(self._bodies)
            self._bodies.append(body)
        return key

    @property
    def feature_names(self) -> list[str]:
        """The atomic fractions' names (given the elements), then ``structure_key``."""
        return [*fraction_names(self.elements), "structure_key"]

    def features(self, structures: Sequence[Structure]) -> np.ndarray:
        """``n x (e + 1)``: the atomic fractions (given the elements), then each structure's key.

        Raises:
            ValueError: a structure holds an element outside the chemical system.
        """
        keys = np.array([[float(self.key(s))] for s in structures], dtype=float).reshape(-1, 1)
        if not self.elements:
            return keys
        return np.hstack([atomic_fractions(structures, self.elements), keys])

    def structure(self, key: int) -> Structure:
        """The structure of ``key``.

        Raises:
            IndexError: no structure has this key.
        """
        if not 0 <= key < len(self._bodies):
            raise IndexError(f"no structure has key {key}; the table holds {len(self._bodies)}")
        return structure_from_params({"structure": self._bodies[key]})

    def atoms(self, key: int) -> Atoms:
        """The structure of ``key`` as ASE ``Atoms`` (as the DFT oracle builds them)."""
        return self.structure(key).to_ase_atoms()
