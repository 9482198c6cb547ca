"""Derivative structures: the symmetrically distinct orderings of a parent crystal.

For a chemical system (``["Cu", "Au", "Pd"]``), the decorations of a parent crystal
(``fcc``, ``bcc``, or ``hcp`` with its two-atom basis) in supercells of up to ``max_atoms``
atoms, enumerated as Hart and Forcade do (for multilattices too): every supercell of the
primitive cell is a Hermite normal form (HNF) matrix; supercells related by a rotation of the
parent are kept once; decorations related by a symmetry operation of the parent that keeps the
supercell (for hcp, screw axes and glide planes included) or by a lattice translation are kept
once; decorations that repeat inside a smaller cell are dropped (they are found in that smaller
cell). What is left has no duplicates, so no pairwise ``StructureMatcher`` pass is needed (the
tests check that with one, and against a brute-force ``StructureMatcher`` count).

Unit cells start at Vegard's-law volumes (the mean of the elements' atomic volumes), so a
relaxation starts close to its minimum.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Literal

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from loop.errors import SpaceError

ParentLattice = Literal["fcc", "bcc", "hcp"]
_PARENTS: dict[str, np.ndarray] = {
    # Primitive vectors as columns, in units of the lattice parameter a (cubic for fcc, bcc).
    "fcc": 0.5 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]).T,
    "bcc": 0.5 * np.array([[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0]]).T,
    # a1, a2 at 120 degrees; c / a = sqrt(8 / 3), the ideal ratio of close-packed spheres.
    "hcp": np.array([[1.0, 0.0, 0.0], [-0.5, 3**0.5 / 2, 0.0], [0.0, 0.0, (8 / 3) ** 0.5]]).T,
}
_BASES: dict[str, np.ndarray] = {
    # Sites of the primitive cell, fractional (``b x 3``); hcp: Wyckoff 2c of P6_3/mmc.
    "fcc": np.zeros((1, 3)),
    "bcc": np.zeros((1, 3)),
    "hcp": np.array([[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
}
# a^3 / (volume per atom): atoms in the cube a^3 (fcc, bcc); 2 / (volume of the hcp cell / a^3).
_A_CUBED_PER_ATOMIC_VOLUME = {"fcc": 4.0, "bcc": 2.0, "hcp": 2**0.5}
_LABELING_CHUNK = 1 << 22  # entries of the largest array scored at once (8 bytes each: 32 MiB)


# --- enumeration of derivative structures -------------------------------------------------


def enumerate_orderings(
    elements: Sequence[str],
    parent: ParentLattice = "fcc",
    max_atoms: int = 4,
    min_atoms: int = 1,
    min_species: int = 2,
) -> list[Structure]:
    """The symmetrically distinct decorations of a parent crystal by ``elements``, as a list
    (see :func:`iter_orderings`)."""
    return list(iter_orderings(elements, parent, max_atoms, min_atoms, min_species))


def iter_orderings(
    elements: Sequence[str],
    parent: ParentLattice = "fcc",
    max_atoms: int = 4,
    min_atoms: int = 1,
    min_species: int = 2,
) -> Iterator[Structure]:
    """The symmetrically distinct decorations of a parent crystal by ``elements``, one at a time.

    Only one supercell's labelings are held at once, so large pools stream in bounded memory.

    Args:
        elements: The chemical system, e.g. ``["Cu", "Au", "Pd"]``.
        parent: The parent crystal; ``hcp`` has two sites per primitive cell, so its
            supercells hold an even number of atoms.
        max_atoms: Largest supercell, in atoms (parent sites).
        min_atoms: Smallest supercell, in atoms (parent sites).
        min_species: Keep decorations with at least this many distinct elements (2 drops the
            pure elements, which serve as references).

    Yields:
        One structure per distinct ordering, at the Vegard's-law volume, in a reduced cell, in
        a fixed order (by cell size, supercell, labeling).
    """
    if parent not in _PARENTS:
        raise SpaceError(f"parent lattice must be one of {sorted(_PARENTS)}, got {parent!r}")
    if not 1 <= min_atoms <= max_atoms:
        raise SpaceError(f"need 1 <= min_atoms <= max_atoms, got {min_atoms} and {max_atoms}")
    check_elements(elements)
    vectors, basis = _PARENTS[parent], _BASES[parent]
    per_cell = len(basis)
    sizes = range(-(-min_atoms // per_cell), max_atoms // per_cell + 1)
    if not sizes:
        raise SpaceError(
            f"{parent} has {per_cell} atoms per primitive cell: no supercell has "
            f"{min_atoms} to {max_atoms} atoms"
        )
    operations = _space_group(vectors, basis)
    rotations = np.array([r for r, _ in operations])
    volumes = {el: atomic_volume(el) for el in elements}
    for n in sizes:
        for hnf in _distinct_supercells(n, rotations):
            perms, translations = _permutations(hnf, operations, basis)
            for labels in _distinct_labelings(perms, translations, len(elements)):
                species = [elements[i] for i in labels]
                if len(set(species)) < min_species:
                    continue
                yield _decorated(parent, hnf, species, volumes)


@cache
def atomic_volume(element: str) -> float:
    """Volume per atom (Å³) of an element's reference crystal (ASE's reference states)."""
    from ase.build import bulk

    atoms = bulk(element)
    return float(atoms.get_volume() / len(atoms))


def check_elements(elements: Sequence[str]) -> None:
    """Raise :class:`SpaceError` unless ``elements`` are distinct element symbols (at least one)."""
    if len(elements) < 1 or len(set(elements)) != len(elements):
        raise SpaceError(f"elements must be distinct and at least one, got {list(elements)}")
    for el in elements:
        if not Element.is_valid_symbol(el):
            raise SpaceError(f"{el!r} is not an element symbol")


def _point_group(vectors: np.ndarray) -> np.ndarray:
    """Rotations of the lattice as integer matrices in its own basis (``k x 3 x 3``)."""
    metric = vectors.T @ vectors
    entries = np.array(list(itertools.product((-1, 0, 1), repeat=9))).reshape(-1, 3, 3)
    keep = np.abs(np.linalg.det(entries)).round() == 1
    entries = entries[keep]
    images = np.einsum("kji,jl,klm->kim", entries, metric, entries)
    same = np.all(np.abs(images - metric) < 1e-8, axis=(1, 2))
    return entries[same].astype(np.int64)


def _space_group(vectors: np.ndarray, basis: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Symmetry operations ``x -> R x + t`` of the parent crystal, fractional, one per coset of
    the lattice translations: the lattice rotations that, with some translation ``t``, map the
    basis sites onto basis sites (for one site at the origin, every rotation with ``t = 0``)."""
    operations = []
    for r in _point_group(vectors):
        moved = basis @ r.T
        for target in basis:
            t = np.mod(target - moved[0], 1.0)
            if _site_map(moved + t, basis) is not None:
                operations.append((r, np.where(np.abs(t - 1.0) < 1e-8, 0.0, t)))
                break
    return operations


def _site_map(points: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For fractional ``points`` (``m x 3``), the basis site each lies on and the integer
    lattice vector from that site to it (``m`` and ``m x 3``), or ``None`` if one lies on none."""
    shifts = points[:, None, :] - basis[None, :, :]  # m x b x 3
    integral = np.all(np.abs(shifts - np.round(shifts)) < 1e-8, axis=2)
    if not integral.any(axis=1).all():
        return None
    which = integral.argmax(axis=1)
    return which, np.round(shifts[np.arange(len(points)), which]).astype(np.int64)


def _hnfs(n: int) -> list[np.ndarray]:
    """Lower-triangular Hermite normal forms of determinant ``n`` (columns = supercell)."""
    out = []
    for a in range(1, n + 1):
        if n % a:
            continue
        for c in range(1, n // a + 1):
            if (n // a) % c:
                continue
            f = n // (a * c)
            for b, d, e in itertools.product(range(c), range(f), range(f)):
                out.append(np.array([[a, 0, 0], [b, c, 0], [d, e, f]], dtype=np.int64))
    return out


def _distinct_supercells(n: int, rotations: np.ndarray) -> list[np.ndarray]:
    """One HNF per class of supercells related by a rotation of the parent."""
    kept: list[np.ndarray] = []
    for hnf in _hnfs(n):
        images = rotations @ hnf  # k x 3 x 3
        if not any(_same_lattice(other, images) for other in kept):
            kept.append(hnf)
    return kept


def _same_lattice(hnf: np.ndarray, images: np.ndarray) -> bool:
    """Whether any of ``images`` spans the same lattice as ``hnf`` (inv(hnf) @ image integral)."""
    coefficients = np.linalg.solve(hnf.astype(float), images.astype(float))
    return bool(np.any(np.all(np.abs(coefficients - np.round(coefficients)) < 1e-8, axis=(1, 2))))


def _sites(hnf: np.ndarray) -> np.ndarray:
    """The ``n`` parent lattice points inside the supercell, as integer vectors (``n x 3``)."""
    a, c, f = hnf[0, 0], hnf[1, 1], hnf[2, 2]
    return np.array(list(itertools.product(range(a), range(c), range(f))), dtype=np.int64)


def _reduce(points: np.ndarray, hnf: np.ndarray) -> np.ndarray:
    """Integer points (``m x 3``) brought into the supercell's coset representatives."""
    points = points.copy()
    for axis in range(3):
        column = hnf[:, axis]
        q = np.floor_divide(points[:, axis], column[axis])
        points -= q[:, None] * column[None, :]
    return points


def _permutations(
    hnf: np.ndarray, operations: Sequence[tuple[np.ndarray, np.ndarray]], basis: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Site permutations of the supercell's symmetry group, and of its pure translations.

    Site ``p * b + i`` is basis site ``i`` of lattice point ``p`` (:func:`_sites` order).

    Returns:
        ``g x nb`` permutations (operations keeping the supercell, times translations) and
        ``(n - 1) x nb`` permutations of the non-trivial translations.
    """
    points = _sites(hnf)
    n, b = len(points), len(basis)
    c, f = hnf[1, 1], hnf[2, 2]

    def index(lattice_points: np.ndarray, sites: np.ndarray) -> np.ndarray:
        r = _reduce(lattice_points, hnf)
        return ((r[:, 0] * c + r[:, 1]) * f + r[:, 2]) * b + sites

    lattice_points = np.repeat(points, b, axis=0)  # the nb sites in index order
    site_of = np.tile(np.arange(b), n)
    perms = []
    for r, t in operations:
        if not _same_lattice(hnf, (r @ hnf)[None]):
            continue
        mapped = _site_map(basis @ r.T + t, basis)
        assert mapped is not None, "a space-group operation maps every basis site onto one"
        target, shift = mapped
        rotated = lattice_points @ r.T + shift[site_of]
        for translation in points:
            perms.append(index(rotated + translation, target[site_of]))
    translations = [index(lattice_points + translation, site_of) for translation in points[1:]]
    return np.unique(np.array(perms), axis=0), np.array(translations, dtype=np.int64).reshape(-1, n * b)


def _distinct_labelings(perms: np.ndarray, translations: np.ndarray, k: int) -> Iterator[tuple[int, ...]]:
    """One labeling (``k`` species on the sites) per orbit of the permutation group ``perms``,
    without those that a pure translation keeps (they repeat in a smaller cell).

    A labeling is kept when its code (the labels as base-``k`` digits) is the smallest of its
    orbit; labelings are scored in chunks, so memory stays bounded for larger cells.
    """
    n = perms.shape[1]
    weights = k ** np.arange(n - 1, -1, -1, dtype=np.int64)
    rows = max(1, _LABELING_CHUNK // max(len(perms), translations.size))
    everything = itertools.product(range(k), repeat=n)
    while chunk := list(itertools.islice(everything, rows)):
        labelings = np.array(chunk, dtype=np.int64)
        codes = labelings @ weights
        images = np.zeros((len(labelings), len(perms)), dtype=np.int64)
        for s in range(n):  # images[l, g] = code of labeling l read through permutation g
            images += labelings[:, perms[:, s]] * weights[s]
        canonical = images.min(axis=1) == codes
        if len(translations):
            periodic = (labelings[:, translations] == labelings[:, None, :]).all(axis=2).any(axis=1)
            canonical &= ~periodic
        yield from (tuple(int(v) for v in row) for row in labelings[canonical])


def _decorated(
    parent: str, hnf: np.ndarray, species: Sequence[str], volumes: Mapping[str, float]
) -> Structure:
    """The supercell ``hnf`` of ``parent`` with ``species`` on its sites (:func:`_permutations`
    order), at the Vegard's-law volume of its composition."""
    volume = float(np.mean([volumes[s] for s in species]))
    a = (volume * _A_CUBED_PER_ATOMIC_VOLUME[parent]) ** (1 / 3)
    vectors, basis = a * _PARENTS[parent], _BASES[parent]
    cell = vectors @ hnf  # columns
    fractional = (_sites(hnf)[:, None, :] + basis[None, :, :]).reshape(-1, 3)
    cartesian = fractional @ vectors.T
    structure = Structure(Lattice(cell.T), list(species), cartesian, coords_are_cartesian=True)
    return structure.get_reduced_structure()
