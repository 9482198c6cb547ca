"""Labelled frames: one immutable, torch-free record that round-trips through dicts, JSON and ASE."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import read, write

from loop.frame import Frame, stress_matrix, stress_voigt


def labelled(atoms: Atoms, stress: bool = True) -> Frame:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return Frame.from_atoms(
        atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() if stress else None
    )


@pytest.fixture
def crystal() -> Frame:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms[0].symbol = "Au"
    atoms.rattle(0.05, seed=1)
    return labelled(atoms)


@pytest.fixture
def cluster() -> Frame:
    atoms = molecule("CH4")  # not periodic: no stress
    atoms.positions += 0.01 * np.arange(len(atoms))[:, None]
    return labelled(atoms, stress=False)


def test_dict_and_json_round_trips_are_exact(crystal: Frame, cluster: Frame) -> None:
    for frame in (crystal, cluster):
        values = frame.as_dict()
        assert Frame.from_dict(values) == frame
        assert Frame.from_dict(json.loads(json.dumps(values))) == frame
    assert cluster.stress is None and cluster.as_dict()["stress_ev_per_a3"] is None
    assert crystal.as_dict()["structure"]["symbols"] == ["Au", "Cu", "Cu", "Cu"]


def test_the_dict_reads_a_dft_results_ledger_metadata(crystal: Frame) -> None:
    # The keys are the DFT runner's; a result's metadata has more, which are ignored, and no id.
    metadata = {k: v for k, v in crystal.as_dict().items() if k != "id"}
    metadata.update(formula="AuCu3", n_steps=3, workdir="runs/x")
    frame = Frame.from_dict(metadata)
    assert replace(frame, id=crystal.id) == crystal
    assert frame.id == crystal.id, "without an id, the id hashes positions and cell as from_atoms does"


def test_atoms_round_trip_through_a_single_point_calculator_and_extxyz(
    crystal: Frame, cluster: Frame, tmp_path: Path
) -> None:
    for frame in (crystal, cluster):
        atoms = frame.atoms()
        assert atoms.get_potential_energy() == frame.energy
        np.testing.assert_array_equal(atoms.get_forces(), frame.forces)
        assert Frame.from_labelled_atoms(atoms, id=frame.id) == frame
    np.testing.assert_array_equal(crystal.atoms().get_stress(), crystal.stress)
    write(str(tmp_path / "frames.extxyz"), [crystal.atoms(), cluster.atoms()], format="extxyz")
    back = [Frame.from_labelled_atoms(a) for a in read(str(tmp_path / "frames.extxyz"), index=":")]
    for frame, read_back in zip((crystal, cluster), back, strict=True):
        np.testing.assert_allclose(read_back.forces, frame.forces, atol=1e-8)
        assert read_back.energy == pytest.approx(frame.energy, abs=1e-10)
    assert back[1].stress is None
    np.testing.assert_allclose(back[0].stress, crystal.stress, atol=1e-10)


def test_a_frame_is_immutable(crystal: Frame) -> None:
    forces = np.array(crystal.forces)
    with pytest.raises(ValueError, match="read-only"):
        crystal.forces[0, 0] = 1.0
    with pytest.raises(AttributeError):
        crystal.energy = 0.0  # type: ignore[misc]
    source = np.zeros((4, 3))
    frame = replace(crystal, forces=source)
    source[0, 0] = 1.0  # the frame copied its arrays
    assert frame.forces[0, 0] == 0.0 and np.array_equal(crystal.forces, forces)
    assert replace(crystal, forces=-crystal.forces) != crystal


def test_stress_is_voigt_whatever_it_came_as(crystal: Frame) -> None:
    assert crystal.stress is not None
    matrix = stress_matrix(crystal.stress)
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(stress_voigt(matrix), crystal.stress)
    assert replace(crystal, stress=matrix) == crystal


def test_bad_frames_are_refused_with_the_problem_named(crystal: Frame) -> None:
    values = crystal.as_dict()
    with pytest.raises(ValueError, match="missing forces_ev_per_a"):
        Frame.from_dict({k: v for k, v in values.items() if k != "forces_ev_per_a"})
    with pytest.raises(ValueError, match="missing symbols"):
        structure = {k: v for k, v in values["structure"].items() if k != "symbols"}
        Frame.from_dict({**values, "structure": structure})
    with pytest.raises(ValueError, match=r"forces have shape \(3, 3\), expected \(4, 3\)"):
        Frame.from_dict({**values, "forces_ev_per_a": values["forces_ev_per_a"][:3]})
    with pytest.raises(ValueError, match="not finite"):
        Frame.from_dict({**values, "energy_ev": float("inf")})
    with pytest.raises(ValueError, match="stress has shape"):
        Frame.from_dict({**values, "stress_ev_per_a3": [0.0, 1.0]})
    with pytest.raises(ValueError, match="no energy or forces label"):
        Frame.from_labelled_atoms(bulk("Cu"))


def test_the_module_needs_no_torch() -> None:
    code = "import sys, loop.frame; assert 'torch' not in sys.modules, 'torch was imported'"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})
