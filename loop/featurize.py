"""Structure and composition features: what a GP sees of a crystal structure.

A :class:`StructureFeaturizer` turns a structure into one row of numbers:

* the fraction of each element of the chemical system (``x_Cu``, ...);
* composition statistics of elemental properties from pymatgen's periodic table (the
  fraction-weighted mean and standard deviation of electronegativity, atomic radius,
  Mendeleev number, atomic mass), which let models carry over between chemical systems;
* simple structural descriptors: volume per atom (Å³), number of sites, and the fraction of
  each kind of element pair among the bonds of the first few neighbour shells (``nn1_Au-Cu``...),
  the descriptors of a pair cluster expansion, which make ordering energies learnable.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Element, Structure

from loop.errors import SpaceError
from surrogates.composition import fraction_names

#: Elemental properties whose composition statistics are features (pymatgen names).
ELEMENT_PROPERTIES: tuple[str, ...] = ("X", "atomic_radius", "mendeleev_no", "atomic_mass")
_SHELL_TOL = 0.04  # relative distance that separates neighbour shells
_MAX_SHELLS = 4
_CUTOFF = 2.7  # neighbour-list radius in units of (volume per atom)^(1/3): 4 fcc shells


class StructureFeaturizer:
    """Features of structures of one chemical system.

    Args:
        elements: The chemical system; structures may contain only these elements.
        shells: Neighbour shells whose pair fractions are features (0 to 4).
    """

    def __init__(self, elements: Sequence[str], shells: int = 3) -> None:
        if not elements or len(set(elements)) != len(elements):
            raise SpaceError(f"a featurizer needs distinct elements, got {list(elements)}")
        if shells not in range(_MAX_SHELLS + 1):
            raise SpaceError(f"shells must be an integer from 0 to {_MAX_SHELLS}, got {shells}")
        self.elements = tuple(sorted(elements))
        self.shells = shells
        self.pairs = list(itertools.combinations_with_replacement(self.elements, 2))
        table = {el: [float(getattr(Element(el), p)) for p in ELEMENT_PROPERTIES] for el in self.elements}
        self._properties = np.array([table[el] for el in self.elements])  # k x p
        self._index = {el: i for i, el in enumerate(self.elements)}
        self._pair_index = np.zeros((len(self.elements), len(self.elements)), dtype=int)  # i <= j → pair
        for i, (a, b) in enumerate(itertools.combinations_with_replacement(range(len(self.elements)), 2)):
            self._pair_index[a, b] = i

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``d`` feature columns."""
        names = fraction_names(self.elements)
        names += [f"{stat}_{p}" for p in ELEMENT_PROPERTIES for stat in ("mean", "std")]
        names += ["volume_per_atom", "n_sites"]
        for shell in range(1, self.shells + 1):
            names += [f"nn{shell}_{a}-{b}" for a, b in self.pairs]
        return names

    def features(self, structures: Sequence[Structure]) -> np.ndarray:
        """``n x d`` features of ``structures`` (columns as :attr:`feature_names`)."""
        return np.array([self._row(s) for s in structures], dtype=float).reshape(
            len(structures), len(self.feature_names)
        )

    def _row(self, structure: Structure) -> list[float]:
        composition = structure.composition.fractional_composition
        unknown = sorted({el.symbol for el in composition.elements} - set(self.elements))
        if unknown:
            raise SpaceError(
                f"structure {structure.formula} has element(s) {unknown} outside {self.elements}"
            )
        x = np.array([composition[el] for el in self.elements])
        mean = x @ self._properties
        std = np.sqrt(np.clip(x @ (self._properties - mean) ** 2, 0, None))
        row = x.tolist()
        row += [v for pair in zip(mean, std, strict=True) for v in pair]
        row += [structure.volume / len(structure), float(len(structure))]
        if self.shells:
            row += self._pair_fractions(structure)
        return row

    def _pair_fractions(self, structure: Structure) -> list[float]:
        """Fraction of each element pair among the bonds of the first ``shells`` shells."""
        scale = (structure.volume / len(structure)) ** (1 / 3)
        centers, neighbors, _, distances = structure.get_neighbor_list(_CUTOFF * scale)
        if len(distances) == 0:
            raise SpaceError(
                f"structure {structure.formula} has no neighbours within {_CUTOFF * scale:.2f} Å"
            )
        order = np.sort(np.unique(np.round(distances / distances.min() / _SHELL_TOL)))
        shell_of = np.searchsorted(order, np.round(distances / distances.min() / _SHELL_TOL))
        species = np.array([self._index[site.specie.symbol] for site in structure])
        a, b = species[centers], species[neighbors]
        pair = self._pair_index[np.minimum(a, b), np.maximum(a, b)]
        n_pairs = len(self.pairs)
        out = np.zeros((self.shells, n_pairs))
        inside = shell_of < self.shells
        np.add.at(out, (shell_of[inside], pair[inside]), 1.0)
        out /= np.maximum(out.sum(axis=1, keepdims=True), 1.0)
        return out.ravel().tolist()
