"""Relaxing candidates with a model: structures moved together follow ASE's FIRE, each on its own path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from surrogates.relaxation import RelaxedCandidates, RelaxSettings, relax, relax_many


def _rattled_cells() -> list[Atoms]:
    """Cu-Au cells of 1-8 atoms, rattled so that each relaxation takes its own number of steps."""
    cells = []
    for i, (symbols, a) in enumerate(
        (
            (["Cu"] * 4, 3.61),
            (["Cu", "Au", "Cu", "Au"], 3.8),
            (["Cu", "Cu", "Cu", "Au"], 3.7),
            (["Au"] * 4, 4.08),
        )
    ):
        atoms = bulk("Cu", "fcc", a, cubic=True)
        atoms.set_chemical_symbols(symbols)
        atoms.rattle(0.05 * (i + 1), seed=i)
        cells.append(atoms)
    big = bulk("Cu", "fcc", 3.61, cubic=True).repeat((2, 1, 1))
    big.rattle(0.1, seed=7)
    return [*cells, big]


class BatchEMT:
    """EMT forces of many structures per call, counting the calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, structures: Sequence[Atoms]) -> list[np.ndarray]:
        self.calls.append(len(structures))
        out = []
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = EMT()
            out.append(atoms.get_forces())
        return out


def test_structures_relaxed_together_end_where_ases_fire_takes_each_alone() -> None:
    structures = _rattled_cells()
    settings = RelaxSettings(steps=30, fmax_ev_per_a=0.02)
    forces = BatchEMT()

    together = relax_many(structures, forces, settings)
    alone = [relax(atoms, EMT(), settings) for atoms in structures]

    for a, b, start in zip(together, alone, structures, strict=True):
        assert a.calc is None and a is not start
        assert np.allclose(a.positions, b.positions, atol=1e-10)
        assert a.get_chemical_symbols() == start.get_chemical_symbols()
    # One model call per step for every structure still moving; each stops on its own.
    assert forces.calls[0] == len(structures) and forces.calls == sorted(forces.calls, reverse=True)
    assert len(forces.calls) <= settings.steps + 1 and forces.calls[-1] < len(structures)
    assert np.allclose(structures[0].positions, _rattled_cells()[0].positions), "inputs are not moved"


def test_relaxing_together_keeps_starts_for_no_steps_or_broken_forces_and_refuses_the_cell() -> None:
    structures = _rattled_cells()[:2]
    kept = relax_many(structures, BatchEMT(), RelaxSettings(steps=0))
    assert all(np.array_equal(k.positions, s.positions) for k, s in zip(kept, structures, strict=True))

    def broken(batch: Sequence[Atoms]) -> list[np.ndarray]:
        forces = BatchEMT()(batch)
        for atoms, f in zip(batch, forces, strict=True):
            if atoms.get_chemical_formula() == "Au2Cu2":
                f[0, 0] = np.nan  # the model blows up on this one
        return forces

    out = relax_many(structures, broken, RelaxSettings(steps=5))
    assert np.array_equal(out[1].positions, structures[1].positions), "a failed relaxation scores the start"
    assert not np.array_equal(out[0].positions, structures[0].positions)
    with pytest.raises(ValueError, match="positions only"):
        relax_many(structures, BatchEMT(), RelaxSettings(cell=True))


def test_prefetched_candidates_are_relaxed_together_once() -> None:
    structures = _rattled_cells()
    settings = RelaxSettings(steps=10)
    forces = BatchEMT()
    candidates = RelaxedCandidates(lambda k: structures[k], lambda: len(structures), EMT(), settings, forces)

    candidates.prefetch([3, 1, 3, 0])
    first_round = list(forces.calls)
    candidates.prefetch([0, 1])  # nothing new
    assert forces.calls == first_round and first_round[0] == 3 and candidates.relaxed == 3
    assert np.allclose(candidates[1].positions, relax(structures[1], EMT(), settings).positions, atol=1e-10)
    one_by_one = RelaxedCandidates(lambda k: structures[k], lambda: len(structures), EMT(), settings)
    one_by_one.prefetch([2])  # no batch forces: relaxed as on first access
    assert one_by_one.relaxed == 1
