"""Prototype structures and the substitution of a chemical system's elements onto them.

A prototype is a crystal structure whose sites carry placeholder species ``Xa``, ``Xb``,
``Xc`` (``Xa`` the most abundant); :func:`substitute` puts every assignment of distinct
elements onto them, scaled to Vegard's-law volumes. The built-in set covers the common
ordered phases of metallic alloys, by Strukturbericht designation (:data:`BUILT_IN`); any
structure file works too, its elements becoming placeholders.

Duplicates are found with pymatgen: structures are grouped by reduced formula and space group,
and only structures in one group are compared with ``StructureMatcher``
(:class:`DistinctStructures`), so de-duplicating thousands of structures stays fast.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from loop.errors import SpaceError
from loop.orderings import _PARENTS, atomic_volume, check_elements

_PLACEHOLDERS = "abcdfghijk"  # Xa, Xb, ...: no "Xe", which is xenon
_VOLUME_PER_ATOM = 10.0  # Å³: a scale at which pymatgen's absolute tolerances make sense


def _from_spacegroup(
    symbol: str, lattice: Lattice, sites: Sequence[tuple[str, Sequence[float]]]
) -> Structure:
    """The primitive cell of the structure ``sites`` (Wyckoff representatives) generate."""
    species, coords = zip(*sites, strict=True)
    structure = Structure.from_spacegroup(symbol, lattice, list(species), [list(c) for c in coords])
    structure.scale_lattice(_VOLUME_PER_ATOM * len(structure))
    return structure.get_primitive_structure().get_reduced_structure()


_SQRT_8_3 = (8 / 3) ** 0.5  # ideal c / a of close packing
_BUILDERS: dict[str, Callable[[], Structure]] = {
    "A1": lambda: Structure(Lattice(_PARENTS["fcc"].T), ["Xa"], [[0, 0, 0]]),
    "A2": lambda: _from_spacegroup("Im-3m", Lattice.cubic(1), [("Xa", (0, 0, 0))]),
    "A3": lambda: _from_spacegroup(
        "P6_3/mmc", Lattice.hexagonal(1, _SQRT_8_3), [("Xa", (1 / 3, 2 / 3, 1 / 4))]
    ),
    "A15": lambda: _from_spacegroup(
        "Pm-3n", Lattice.cubic(1), [("Xb", (0, 0, 0)), ("Xa", (1 / 4, 0, 1 / 2))]
    ),
    "B1": lambda: _from_spacegroup(
        "Fm-3m", Lattice.cubic(1), [("Xa", (0, 0, 0)), ("Xb", (1 / 2, 1 / 2, 1 / 2))]
    ),
    "B2": lambda: Structure(Lattice.cubic(1.0), ["Xa", "Xb"], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),
    "B3": lambda: _from_spacegroup(
        "F-43m", Lattice.cubic(1), [("Xa", (0, 0, 0)), ("Xb", (1 / 4, 1 / 4, 1 / 4))]
    ),
    "C1": lambda: _from_spacegroup(
        "Fm-3m", Lattice.cubic(1), [("Xb", (0, 0, 0)), ("Xa", (1 / 4, 1 / 4, 1 / 4))]
    ),
    # MoSi2 as an ordering of bcc: c = 3 a, Xa at z = 1/3.
    "C11b": lambda: _from_spacegroup(
        "I4/mmm", Lattice.tetragonal(1, 3), [("Xb", (0, 0, 0)), ("Xa", (0, 0, 1 / 3))]
    ),
    # MgZn2 and MgCu2 Laves phases at their ideal positional parameters (pymatgen's Fd-3m is
    # origin choice 1: 16c and 8b).
    "C14": lambda: _from_spacegroup(
        "P6_3/mmc",
        Lattice.hexagonal(1, _SQRT_8_3),
        [("Xb", (1 / 3, 2 / 3, 1 / 16)), ("Xa", (0, 0, 0)), ("Xa", (5 / 6, 2 / 3, 1 / 4))],
    ),
    "C15": lambda: _from_spacegroup(
        "Fd-3m", Lattice.cubic(1), [("Xa", (1 / 8, 1 / 8, 1 / 8)), ("Xb", (1 / 2, 1 / 2, 1 / 2))]
    ),
    "D0_3": lambda: _from_spacegroup(
        "Fm-3m",
        Lattice.cubic(1),
        [("Xb", (0, 0, 0)), ("Xa", (1 / 2, 1 / 2, 1 / 2)), ("Xa", (1 / 4, 1 / 4, 1 / 4))],
    ),
    "D0_19": lambda: _from_spacegroup(
        "P6_3/mmc",
        Lattice.hexagonal(1, _SQRT_8_3 / 2),
        [("Xb", (1 / 3, 2 / 3, 1 / 4)), ("Xa", (5 / 6, 2 / 3, 1 / 4))],
    ),
    "D0_22": lambda: _from_spacegroup(
        "I4/mmm",
        Lattice.tetragonal(1, 2),
        [("Xb", (0, 0, 0)), ("Xa", (0, 0, 1 / 2)), ("Xa", (0, 1 / 2, 1 / 4))],
    ),
    "L1_0": lambda: Structure(
        Lattice.tetragonal(2**-0.5, 1.0), ["Xa", "Xb"], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]
    ),
    "L1_1": lambda: Structure(
        Lattice([[1, 0.5, 0.5], [0.5, 1, 0.5], [0.5, 0.5, 1]]),
        ["Xa", "Xb"],
        [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]],
    ),
    "L1_2": lambda: Structure(
        Lattice.cubic(1.0),
        ["Xa", "Xa", "Xa", "Xb"],
        [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]],
    ),
    # Heusler Cu2MnAl: Xa on 8c, Xb and Xc on 4a and 4b.
    "L2_1": lambda: _from_spacegroup(
        "Fm-3m",
        Lattice.cubic(1),
        [("Xb", (0, 0, 0)), ("Xc", (1 / 2, 1 / 2, 1 / 2)), ("Xa", (1 / 4, 1 / 4, 1 / 4))],
    ),
}
#: Names of the built-in prototypes (Strukturbericht designations).
BUILT_IN: tuple[str, ...] = tuple(sorted(_BUILDERS))


def prototype(name: str) -> Structure:
    """A built-in prototype with placeholder species ``Xa``, ``Xb``, ``Xc`` (see :data:`BUILT_IN`).

    Any scale: substitution scales structures to Vegard's-law volumes.
    """
    if name not in _BUILDERS:
        raise SpaceError(f"unknown prototype {name!r}; built-in: {list(BUILT_IN)} or a structure file")
    return _BUILDERS[name]()


def load_prototypes(names: Sequence[str], base_dir: Path) -> dict[str, Structure]:
    """Prototypes by built-in name or structure file (relative to ``base_dir``; named by its
    stem), the file's elements becoming placeholders in alphabetical order."""
    out = {}
    for name in names:
        path = base_dir / name
        if path.is_file():
            structure = Structure.from_file(path)
            symbols = sorted({site.specie.symbol for site in structure})
            mapping = {s: f"X{_PLACEHOLDERS[i]}" for i, s in enumerate(symbols)}
            out[path.stem] = Structure(
                structure.lattice, [mapping[s.specie.symbol] for s in structure], structure.frac_coords
            )
        else:
            out[name] = prototype(name)
    return out


class DistinctStructures:
    """Structures seen so far, one per class of ``StructureMatcher``-equal structures.

    Structures are grouped by reduced formula and space-group number; only structures of one
    group are compared, and a structure whose formula was never seen costs one dictionary
    look-up.

    Args:
        symprec: Symmetry tolerance of the space-group analysis (Å).
    """

    def __init__(self, symprec: float = 0.01) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.symprec = symprec
        # Tight: prototypes and enumerated orderings sit at ideal positions, and distinct
        # orderings can lie within pymatgen's default tolerances of each other.
        self._matcher = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0)
        self._groups: dict[str, dict[int, list[Structure]]] = {}

    def __len__(self) -> int:
        return sum(len(group) for by_number in self._groups.values() for group in by_number.values())

    def __contains__(self, structure: Structure) -> bool:
        by_number = self._groups.get(structure.composition.reduced_formula)
        if not by_number:
            return False
        group = by_number.get(self._space_group(structure), [])
        return any(self._matcher.fit(structure, other) for other in group)

    def add(self, structure: Structure) -> bool:
        """Keep ``structure`` unless an equal one is kept; whether it was new."""
        if structure in self:
            return False
        by_number = self._groups.setdefault(structure.composition.reduced_formula, {})
        by_number.setdefault(self._space_group(structure), []).append(structure)
        return True

    def _space_group(self, structure: Structure) -> int:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        with warnings.catch_warnings():  # spglib's notice about its own error handling, each call
            warnings.filterwarnings("ignore", "Set OLD_ERROR_HANDLING", DeprecationWarning)
            return SpacegroupAnalyzer(structure, symprec=self.symprec).get_space_group_number()


def substitute(
    prototypes: Mapping[str, Structure],
    elements: Sequence[str],
    distinct: DistinctStructures | None = None,
) -> list[tuple[str, Structure]]:
    """Every assignment of distinct ``elements`` to each prototype's placeholders, de-duplicated.

    Each structure is scaled to the Vegard's-law volume of its composition; duplicates (also
    across prototypes) are dropped.

    Args:
        prototypes: Prototypes by name.
        elements: The chemical system.
        distinct: Structures already kept (and to add the new ones to); default: none.

    Returns:
        ``(prototype name, structure)`` pairs.
    """
    check_elements(elements)
    distinct = DistinctStructures() if distinct is None else distinct
    volumes = {el: atomic_volume(el) for el in elements}
    kept: list[tuple[str, Structure]] = []
    for name, proto in prototypes.items():
        placeholders = sorted({site.specie.symbol for site in proto}, key=str)
        for chosen in itertools.permutations(elements, len(placeholders)):
            mapping = dict(zip(placeholders, chosen, strict=True))
            species = [mapping[s.specie.symbol] for s in proto]
            structure = Structure(proto.lattice, species, proto.frac_coords)
            structure.scale_lattice(float(np.sum([volumes[s] for s in species])))
            if distinct.add(structure):
                kept.append((name, structure))
    return kept
