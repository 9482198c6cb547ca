"""Thermodynamic stability: formation energies and the convex hull.

Formation energy per atom is measured against the elements in their reference crystals,
computed with the same calculator and settings (the DFT runner does that). The convex hull
of formation energy over composition is pymatgen's ``PhaseDiagram``, built from every done
evaluation of a campaign (each element at 0 eV/atom), so it is updated as the dataset grows;
``e_above_hull`` (eV/atom) is each structure's height above it.

Campaign goals: minimise ``formation_energy_per_atom`` (the objective the surrogate learns),
and find every structure within X meV/atom of the hull (:func:`near_hull`); the latter is met
once no unevaluated candidate could still land that close (:func:`could_reach_hull`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition
from scipy.spatial import ConvexHull

from loop.errors import SpaceError

ON_HULL_TOL_EV = 1e-3  # eV/atom: below this, a structure counts as on the hull
_FACING_DOWN = 1e-6  # a hull facet is a lower one if its unit normal's energy part is below -this


@dataclass(frozen=True)
class HullPoint:
    """One structure placed against the hull.

    Args:
        id: The candidate id.
        formula: Its reduced formula.
        formation_energy_per_atom: eV/atom.
        e_above_hull: eV/atom (0 on the hull).
    """

    id: str
    formula: str
    formation_energy_per_atom: float
    e_above_hull: float

    @property
    def on_hull(self) -> bool:
        return self.e_above_hull < ON_HULL_TOL_EV


def formation_energy_per_atom(
    energy_ev: float, symbols: Sequence[str], references_ev_per_atom: Mapping[str, float]
) -> float:
    """``(E - sum of the atoms' elemental reference energies) / n`` (eV/atom).

    Args:
        energy_ev: Total energy of the structure (eV).
        symbols: The ``n`` atoms' chemical symbols.
        references_ev_per_atom: Energy per atom of each element's reference crystal (eV).
    """
    missing = sorted(set(symbols) - set(references_ev_per_atom))
    if missing:
        raise SpaceError(f"no elemental reference energy for {missing}")
    if not symbols:
        raise SpaceError("a structure needs at least one atom")
    return (energy_ev - sum(references_ev_per_atom[s] for s in symbols)) / len(symbols)


def phase_diagram(points: Iterable[tuple[str, float]], elements: Sequence[str] | None = None) -> PhaseDiagram:
    """The convex hull of ``(formula, formation energy per atom)`` points.

    Each element enters at 0 eV/atom, so the hull needs nothing but formation energies.
    """
    entries = []
    present: set[str] = set(elements or ())
    for formula, formation in points:
        composition = Composition(formula)
        present |= {el.symbol for el in composition.elements}
        entries.append(PDEntry(composition, formation * composition.num_atoms))
    entries += [PDEntry(Composition(el), 0.0) for el in sorted(present)]
    return PhaseDiagram(entries)


def hull_points(
    rows: Iterable[tuple[str, str, float]], elements: Sequence[str] | None = None
) -> list[HullPoint]:
    """``e_above_hull`` of each ``(id, formula, formation energy per atom)`` row."""
    rows = list(rows)
    diagram = phase_diagram([(formula, value) for _, formula, value in rows], elements)
    out = []
    for cid, formula, value in rows:
        composition = Composition(formula)
        entry = PDEntry(composition, value * composition.num_atoms)
        e_hull = float(diagram.get_e_above_hull(entry, allow_negative=True) or 0.0)
        out.append(HullPoint(cid, composition.reduced_formula, value, max(e_hull, 0.0)))
    return out


def campaign_hull(ledger: object, campaign: str | None = None) -> list[HullPoint]:
    """Hull of every done evaluation of a campaign that measured ``formation_energy_per_atom``."""
    from loop.ledger import Ledger

    assert isinstance(ledger, Ledger)
    row = ledger.campaign(campaign)
    rows = [
        (e.candidate_id, str(e.params.get("formula")), e.values["formation_energy_per_atom"])
        for e in ledger.evaluations(int(row["id"]), ["done"])
        if "formation_energy_per_atom" in e.values
    ]
    if not rows:
        return []
    return hull_points(rows)


def on_hull(points: Iterable[HullPoint]) -> set[str]:
    """Ids of the structures on the hull."""
    return {p.id for p in points if p.on_hull}


def near_hull(points: Iterable[HullPoint], within_mev: float) -> set[str]:
    """Ids of the structures within ``within_mev`` meV/atom of the hull (the goal's set)."""
    if within_mev < 0:
        raise SpaceError(f"within_mev must be >= 0, got {within_mev}")
    return {p.id for p in points if p.e_above_hull * 1000.0 <= within_mev + 1e-9}


def hull_heights(diagram: PhaseDiagram, rows: Iterable[tuple[str, float]]) -> list[float]:
    """Height above the hull (eV/atom; negative below it) of each ``(formula, formation energy
    per atom)`` row, against the hull's energy at that composition.

    Raises:
        SpaceError: a formula has an element the diagram lacks.
    """
    known = {el.symbol for el in diagram.elements}
    hull_at: dict[str, float] = {}
    heights = []
    for formula, value in rows:
        composition = Composition(formula)
        key = composition.reduced_formula
        if key not in hull_at:
            missing = sorted({el.symbol for el in composition.elements} - known)
            if missing:
                raise SpaceError(f"{formula}: element(s) {missing} are not in the phase diagram")
            hull_at[key] = float(diagram.get_hull_energy_per_atom(composition))
        heights.append(value - hull_at[key])
    return heights


def could_reach_hull(
    diagram: PhaseDiagram, formulas: Sequence[str], lower_bounds_ev: Sequence[float], within_mev: float
) -> list[int]:
    """Indices of the candidates that could still land within ``within_mev`` meV/atom of the hull.

    The near-hull goal is met when this is empty: no candidate's lower bound of formation
    energy per atom (eV/atom; the surrogate's mean minus a few standard deviations) comes that
    close to the current hull.
    """
    if within_mev < 0:
        raise SpaceError(f"within_mev must be >= 0, got {within_mev}")
    heights = hull_heights(diagram, zip(formulas, lower_bounds_ev, strict=True))
    return [i for i, h in enumerate(heights) if h * 1000.0 <= within_mev + 1e-9]


def best_fraction(points: Iterable[HullPoint], fraction: float) -> set[str]:
    """Ids of the lowest-formation-energy ``fraction`` of the structures (at least one)."""
    if not 0 < fraction <= 1:
        raise SpaceError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(points, key=lambda p: p.formation_energy_per_atom)
    return {p.id for p in ordered[: max(1, round(fraction * len(ordered)))]}


def hull_planes(diagram: PhaseDiagram, elements: Sequence[str]) -> np.ndarray:
    """The hull as planes: ``F x k`` coefficients ``c_f`` with ``E_hull(x) = max_f c_f · x``.

    The lower hull of formation energy is a convex piecewise-linear function of the ``k``
    atomic fractions ``x`` (over ``elements``, in order), so it is the largest of its facets'
    planes everywhere on the composition simplex, not only on each facet. That makes the hull
    energy at any composition one matrix product, cheap enough to evaluate inside an
    acquisition function at every candidate. The planes come from the diagram's entries
    (:func:`lower_hull_planes`), in the frame of the formation energies given: pymatgen's
    ``get_form_energy_per_atom`` measures against the lowest entry of each element instead,
    which moves the hull wherever an element's polymorph lies below its reference crystal.

    Raises:
        SpaceError: the diagram has an element outside ``elements``.
    """
    extra = sorted({el.symbol for el in diagram.elements} - set(elements))
    if extra:
        raise SpaceError(f"the phase diagram has element(s) {extra} outside {list(elements)}")
    entries = diagram.all_entries
    fractions = np.array([[e.composition.get_atomic_fraction(el) for el in elements] for e in entries])
    energies = np.array([e.energy_per_atom for e in entries])  # formation energies: see phase_diagram
    return lower_hull_planes(fractions.reshape(-1, len(elements)), energies)


def hull_energy(planes: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Hull formation energy (eV/atom) at each of ``n x k`` compositions (atomic fractions)."""
    return (np.asarray(fractions, dtype=float) @ planes.T).max(axis=-1)


def lower_hull_planes(fractions: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """The hull's planes (as :func:`hull_planes`) of ``n x k`` compositions with formation
    energies ``n`` (eV/atom), straight from qhull: for the many hulls of one decision.

    :func:`hull_planes` goes through pymatgen's ``PhaseDiagram`` (entries, compositions,
    formulas), ~0.1 s per hull of a few hundred points; an acquisition that builds a hull per
    posterior draw needs it in milliseconds. Each element enters at 0 eV/atom; a composition
    seen twice keeps its lowest energy; points above 0 cannot touch the hull and are dropped.
    One point far above the simplex's centre makes the point set full-dimensional even when
    every energy is 0; the facets it spans face up and are not kept.

    Raises:
        SpaceError: the rows are not atomic fractions or the energies are not finite.
    """
    fractions, energies = np.asarray(fractions, dtype=float), np.asarray(energies, dtype=float)
    if fractions.ndim != 2 or energies.shape != fractions.shape[:1]:
        raise SpaceError(f"need n x k fractions and n energies, got {fractions.shape} and {energies.shape}")
    if not np.isfinite(energies).all():
        raise SpaceError("hull energies must be finite")
    k = fractions.shape[1]
    if fractions.size and (np.abs(fractions.sum(axis=1) - 1) > 1e-6).any():
        raise SpaceError("hull compositions must be atomic fractions (rows summing to 1)")
    if k < 2:
        return np.zeros((1, k))
    below = energies < 0
    points = np.vstack([np.eye(k), fractions[below]])
    heights = np.concatenate([np.zeros(k), energies[below]])
    unique, inverse = np.unique(points.round(9), axis=0, return_inverse=True)
    lowest = np.full(len(unique), np.inf)
    np.minimum.at(lowest, inverse.reshape(-1), heights)
    apex = np.append(np.full(k - 1, 1.0 / k), 1.0 + np.abs(lowest).max())
    cloud = np.vstack([np.column_stack([unique[:, 1:], lowest]), apex])
    equations = ConvexHull(cloud, qhull_options="Qt").equations  # n · p + offset = 0, unit outward n
    # Lower facets face down. Facets in the simplex's walls (where binaries and ternaries of a
    # larger system lie) are vertical, their energy component 0 up to round-off (~1e-10); a real
    # facet's is -1/sqrt(1 + slope²), below -1e-6 for any slope under 10^6 eV/atom.
    lower = equations[equations[:, -2] < -_FACING_DOWN]
    slope = -lower[:, :-2] / lower[:, -2:-1]  # E = slope · x[1:] + intercept
    intercept = -lower[:, -1] / lower[:, -2]
    # x[0] = 1 - sum(x[1:]), so E = intercept x[0] + sum_j (intercept + slope_j) x[j]
    return np.column_stack([intercept, intercept[:, None] + slope])
