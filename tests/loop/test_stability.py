"""Formation energies and the convex hull."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition

from loop.errors import SpaceError
from loop.stability import (
    best_fraction,
    could_reach_hull,
    formation_energy_per_atom,
    hull_energy,
    hull_heights,
    hull_planes,
    hull_points,
    lower_hull_planes,
    near_hull,
    on_hull,
    phase_diagram,
)


def test_formation_energy_is_against_the_elemental_references() -> None:
    refs = {"Cu": -3.0, "Au": -2.0}
    assert formation_energy_per_atom(-5.4, ["Cu", "Au"], refs) == pytest.approx(-0.2)
    with pytest.raises(SpaceError, match=r"no elemental reference energy for \['Pd'\]"):
        formation_energy_per_atom(-1.0, ["Pd"], refs)


def test_hull_of_a_binary_from_formation_energies() -> None:
    rows = [
        ("a", "CuAu", -0.10),  # on the hull
        ("b", "Cu3Au", -0.07),  # on the hull: below the Cu—CuAu tie line (-0.05)
        ("c", "CuAu3", -0.03),  # 0.02 eV/atom above the CuAu—Au tie line (-0.05)
        ("d", "CuAu", -0.095),  # a second CuAu ordering, 5 meV/atom above the first
    ]
    points = {p.id: p for p in hull_points(rows)}
    assert on_hull(points.values()) == {"a", "b"}
    assert points["c"].e_above_hull == pytest.approx(0.02)
    assert points["d"].e_above_hull == pytest.approx(0.005)
    assert near_hull(points.values(), within_mev=5.0) == {"a", "b", "d"}
    assert best_fraction(points.values(), 0.25) == {"a"}
    with pytest.raises(SpaceError, match="within_mev must be >= 0"):
        near_hull(points.values(), -1)


def test_hull_grows_with_the_data() -> None:
    rows = [("a", "CuAu", -0.10)]
    assert on_hull(hull_points(rows)) == {"a"}
    rows.append(("b", "CuAu", -0.12))  # a better ordering arrives: a is pushed off
    points = {p.id: p for p in hull_points(rows)}
    assert on_hull(points.values()) == {"b"} and points["a"].e_above_hull == pytest.approx(0.02)


def test_ternary_phase_diagram_has_the_elements_at_zero() -> None:
    diagram = phase_diagram([("CuAuPd", -0.07), ("CuPd", -0.08)], elements=["Cu", "Au", "Pd"])
    stable = {e.composition.reduced_formula for e in diagram.stable_entries}
    assert stable == {"Cu", "Au", "Pd", "CuPd", Composition("CuAuPd").reduced_formula}


def test_candidates_that_could_still_reach_the_hull() -> None:
    # Hull: Cu (0), Cu3Au (-0.07), CuAu (-0.10), Au (0); at CuAu3 the CuAu—Au tie line is -0.05.
    diagram = phase_diagram([("CuAu", -0.10), ("Cu3Au", -0.07)])
    formulas = ["CuAu3", "CuAu", "Cu3Au", "Au2Cu6"]
    lower_bounds = [-0.03, -0.07, -0.10, -0.04]
    assert hull_heights(diagram, zip(formulas, lower_bounds, strict=True)) == pytest.approx(
        [0.02, 0.03, -0.03, 0.03]
    )
    # Within 25 meV/atom: CuAu3's bound (20 meV above) and Cu3Au's (below the hull).
    assert could_reach_hull(diagram, formulas, lower_bounds, within_mev=25.0) == [0, 2]
    assert could_reach_hull(diagram, formulas, lower_bounds, within_mev=30.0) == [0, 1, 2, 3]
    assert could_reach_hull(diagram, formulas[1:2], lower_bounds[1:2], within_mev=25.0) == []
    with pytest.raises(SpaceError, match=r"CuPd: element\(s\) \['Pd'\] are not in the phase diagram"):
        hull_heights(diagram, [("CuPd", -0.1)])
    with pytest.raises(SpaceError, match="within_mev must be >= 0"):
        could_reach_hull(diagram, formulas, lower_bounds, within_mev=-1.0)


def test_hull_planes_give_the_hull_energy_at_every_composition() -> None:
    elements = ["Au", "Cu", "Pd"]
    points = [("CuAu", -0.05), ("Cu3Au", -0.04), ("CuAu3", -0.01), ("CuPd", -0.08), ("CuAuPd", -0.09)]
    diagram = phase_diagram(points, elements)
    planes = hull_planes(diagram, elements)
    rng = np.random.default_rng(0)
    fractions = rng.dirichlet([1.0, 1.0, 1.0], size=200)
    fractions[:50, 2] = 0.0  # the Au-Cu edge
    fractions /= fractions.sum(axis=1, keepdims=True)
    expected = [
        diagram.get_hull_energy_per_atom(
            Composition({el: x for el, x in zip(elements, row, strict=True) if x > 0})
        )
        for row in fractions
    ]
    assert hull_energy(planes, fractions) == pytest.approx(expected, abs=1e-9)
    assert hull_energy(planes, [[0.5, 0.5, 0.0]]) == pytest.approx([-0.05])


def test_the_fast_hull_is_pymatgens_hull() -> None:
    # Random points of a 4-element system (most above the hull, one composition twice) give
    # the same hull energy everywhere as the PhaseDiagram of the same points.
    elements = ["Ag", "Au", "Cu", "Pd"]
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, size=(120, 4))
    counts = counts[(counts > 0).sum(axis=1) > 1]  # no elements: pymatgen would take them as references
    fractions = counts / counts.sum(axis=1, keepdims=True)
    energies = rng.normal(-0.05, 0.05, size=len(fractions))
    energies[1] = energies[0] + 0.01
    fractions[1] = fractions[0]
    formulas = [" ".join(f"{el}{n}" for el, n in zip(elements, row, strict=True) if n) for row in counts]
    formulas[1] = formulas[0]
    diagram = phase_diagram(zip(formulas, energies, strict=True), elements)
    probe = rng.dirichlet(np.ones(4), size=300)
    probe[:40, 2:] = 0.0  # the Ag-Au edge
    probe /= probe.sum(axis=1, keepdims=True)
    fast = hull_energy(lower_hull_planes(fractions, energies), probe)
    assert fast == pytest.approx(hull_energy(hull_planes(diagram, elements), probe), abs=1e-9)


def test_the_fast_hull_of_nothing_below_zero_is_zero_and_bad_rows_are_refused() -> None:
    planes = lower_hull_planes(np.array([[0.5, 0.5, 0.0]]), np.array([0.2]))
    assert hull_energy(planes, [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]) == pytest.approx([0.0, 0.0])
    assert hull_energy(lower_hull_planes(np.zeros((0, 2)), np.zeros(0)), [[0.4, 0.6]]) == pytest.approx([0.0])
    # an element's polymorph below its reference crystal is the hull at that corner
    corner = lower_hull_planes(np.array([[1.0, 0.0, 0.0]]), np.array([-0.02]))
    assert hull_energy(corner, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]) == pytest.approx([-0.02, -0.01])
    with pytest.raises(SpaceError, match="atomic fractions"):
        lower_hull_planes(np.array([[0.5, 0.6]]), np.array([-0.1]))
    with pytest.raises(SpaceError, match="finite"):
        lower_hull_planes(np.array([[0.5, 0.5]]), np.array([np.nan]))


def test_hull_planes_of_the_bare_elements_are_zero() -> None:
    planes = hull_planes(phase_diagram([], ["Au", "Cu"]), ["Au", "Cu"])
    assert hull_energy(planes, [[0.3, 0.7], [1.0, 0.0]]) == pytest.approx([0.0, 0.0])
    with pytest.raises(SpaceError, match=r"element\(s\) \['Pd'\] outside"):
        hull_planes(phase_diagram([("CuPd", -0.1)]), ["Au", "Cu"])
