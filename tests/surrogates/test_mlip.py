"""The MACE committee: it fits, knows where it is unsure, and speaks ASE and BoTorch."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from botorch.acquisition import qUpperConfidenceBound

from surrogates.base import SurrogateError
from surrogates.baseline import Baseline
from surrogates.mlip import (
    Frame,
    MACESettings,
    MLIPCommittee,
    StructureEnsemble,
    _initial_model,
    _train_member,
)

TINY = MACESettings(channels=8, epochs=40, warm_epochs=2, min_steps=4)


def cell() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    del atoms[0]
    return atoms


def labelled(atoms: Atoms) -> Frame:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return Frame.from_atoms(atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())


def rattled(amplitude: float, seed: int) -> Atoms:
    atoms = cell()
    atoms.rattle(amplitude, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def training() -> list[Frame]:
    return [labelled(rattled(0.03, seed)) for seed in range(6)]


@pytest.fixture(scope="module")
def committee(training: list[Frame], mlip_workers: Executor) -> Iterator[MLIPCommittee]:
    with MLIPCommittee(["Cu"], TINY, size=3, seed=0, executor=mlip_workers) as fitted:
        fitted.fit(training)
        yield fitted


def test_uncertainty_grows_away_from_the_training_data(
    committee: MLIPCommittee, training: list[Frame]
) -> None:
    seen = committee.predict(training[0].atoms()).forces_std.max()
    compressed = cell()
    compressed.set_cell(compressed.cell * 0.88, scale_atoms=True)
    far = {"compressed": compressed, "rattled": rattled(0.25, seed=99)}
    for name, atoms in far.items():
        assert committee.predict(atoms).forces_std.max() > 2 * seen, name


def test_calculator_reports_means_and_spreads(committee: MLIPCommittee) -> None:
    atoms = rattled(0.05, seed=7)
    atoms.calc = committee.calculator()
    forces = atoms.get_forces()
    results = atoms.calc.results
    members = results["committee"]
    assert forces.shape == (len(atoms), 3) and results["forces_std"].shape == (len(atoms),)
    assert atoms.get_stress().shape == (6,) and results["stress_std"].shape == (6,)
    np.testing.assert_allclose(atoms.get_potential_energy(), members.energy.mean())
    np.testing.assert_allclose(results["energy_std"], members.energy.std())
    np.testing.assert_allclose(forces, members.forces.mean(axis=0))
    # Forces are close to EMT's near the training data (the potential learnt something).
    truth = labelled(atoms)
    assert np.abs(forces - truth.forces).mean() < 0.3 * np.abs(truth.forces).mean() + 0.05


def test_botorch_ranks_structures_by_committee_spread(
    committee: MLIPCommittee, training: list[Frame]
) -> None:
    compressed = cell()
    compressed.set_cell(compressed.cell * 0.88, scale_atoms=True)
    model = StructureEnsemble(committee, [training[0].atoms(), compressed])
    X = torch.tensor([[[0.0]], [[1.0]]], dtype=torch.float64)
    posterior = model.posterior(X)
    assert posterior.mean.shape == (2, 1, 1)
    variance = posterior.variance.squeeze()
    assert variance[1] > variance[0]
    ucb = qUpperConfidenceBound(model, beta=4.0)(X)  # any BoTorch acquisition takes it
    assert ucb.shape == (2,) and torch.isfinite(ucb).all()
    with pytest.raises(SurrogateError, match="structure indices"):
        model.posterior(torch.tensor([[2.0]], dtype=torch.float64))


def test_warm_start_keeps_what_was_learnt_and_checkpoints_round_trip(
    committee: MLIPCommittee, training: list[Frame], tmp_path: Path
) -> None:
    probe = rattled(0.04, seed=11)
    before = committee.predict(probe)
    committee.save(tmp_path / "c.pt")
    restored = MLIPCommittee(["Cu"], TINY, size=3).load(tmp_path / "c.pt")
    np.testing.assert_allclose(restored.predict(probe).forces, before.forces, atol=1e-6)
    fits = committee.fits
    committee.fit([*training, labelled(probe)])  # warm: replays everything, a few steps
    assert committee.fits == fits + 1
    after = committee.predict(probe)
    # Warm-started members move a little, not back to a random initialisation.
    assert np.abs(after.forces.mean(0) - before.forces.mean(0)).max() < 0.5
    with pytest.raises(SurrogateError, match="committee of 3"):
        MLIPCommittee(["Cu"], TINY, size=2).load(tmp_path / "c.pt")


def test_a_warm_start_steps_at_the_warm_learning_rate(training: list[Frame], mlip_workers: Executor) -> None:
    probe = rattled(0.05, seed=11)
    moved = {}
    for rate in (1e-9, 5e-3):
        settings = replace(TINY, epochs=5, warm_learning_rate=rate, bootstrap=False)  # any trained state
        with MLIPCommittee(["Cu"], settings, size=2, seed=0, executor=mlip_workers) as members:
            members.fit(training[:4])
            before = members.predict(probe).forces
            members.fit(training)  # warm: the same weights, two more frames, warm_epochs passes
            moved[rate] = float(np.abs(members.predict(probe).forces - before).max())
    assert moved[1e-9] < 1e-4, "a vanishing warm rate leaves the trained weights where they were"
    assert moved[5e-3] > 100 * moved[1e-9] + 1e-3
    with pytest.raises(ValueError, match="warm_learning_rate = 0"):
        MACESettings(warm_learning_rate=0)


def test_committees_sharing_workers_train_on_their_own_labels(
    committee: MLIPCommittee, training: list[Frame], mlip_workers: Executor
) -> None:
    # The same ids and structures as ``committee``'s frames, with the forces reversed: a
    # worker that cached graphs by frame id would train this one on the other's labels.
    reversed_forces = [replace(frame, forces=-frame.forces) for frame in training]
    with MLIPCommittee(["Cu"], TINY, size=2, executor=mlip_workers) as other:
        other.fit(reversed_forces)
    probe = training[1]
    alignment = {
        name: float(np.sum(c.predict(probe.atoms()).forces.mean(0) * probe.forces))
        for name, c in (("committee", committee), ("other", other))
    }
    assert alignment["committee"] > 0 > alignment["other"], alignment
    assert mlip_workers.submit(abs, -3).result() == 3, "closing a committee leaves a shared pool running"


def test_a_members_start_depends_on_its_seed_alone(training: list[Frame]) -> None:
    # A worker builds a model once and copies it after; the copy must not carry the seed of
    # whichever member the worker happened to train first (which made runs irreproducible).
    arch = MLIPCommittee(["Cu"], TINY, size=2)._architecture(training).as_dict()
    threads = torch.get_num_threads()  # a member trains on one thread; this process is not a worker
    try:
        _initial_model.cache_clear()
        fresh = _train_member(arch, None, training, 0, 1)[0]
        _initial_model.cache_clear()
        after_another = [_train_member(arch, None, training, seed, 1)[0] for seed in (100, 0)]
    finally:
        torch.set_num_threads(threads)
    assert after_another[1] == fresh
    assert after_another[0] != fresh


@pytest.mark.skipif(importlib.util.find_spec("chgnet") is None, reason="chgnet is not installed")
def test_a_pretrained_baseline_is_a_better_starting_point_far_from_the_data(
    training: list[Frame], mlip_workers: Executor
) -> None:
    compressed = cell()
    compressed.set_cell(compressed.cell * 0.9, scale_atoms=True)
    compressed.rattle(0.05, seed=3)
    far = [compressed, rattled(0.15, seed=8)]
    errors = {}
    for name, baseline in (("scratch", None), ("chgnet", Baseline("chgnet"))):
        with MLIPCommittee(["Cu"], TINY, size=2, baseline=baseline, executor=mlip_workers) as committee:
            committee.fit(training[:4])
            errors[name] = [
                np.abs(committee.predict(a).forces.mean(0) - labelled(a).forces).mean() for a in far
            ]
    assert all(2 * b < s for b, s in zip(errors["chgnet"], errors["scratch"], strict=True)), errors
    with pytest.raises(SurrogateError, match=r"baseline 'no\.such:Calc' cannot be built"):
        Baseline("no.such:Calc")


def test_bad_inputs_are_refused(training: list[Frame]) -> None:
    with pytest.raises(ValueError, match="at least 2 members"):
        MLIPCommittee(["Cu"], size=1)
    with pytest.raises(ValueError, match="chemical symbols"):
        MLIPCommittee(["Xx"])
    with pytest.raises(ValueError, match="invalid MACE settings: channels = 0"):
        MACESettings(channels=0)
    unfitted = MLIPCommittee(["Cu"], TINY, size=2)
    with pytest.raises(SurrogateError, match="not fitted"):
        unfitted.predict(cell())
    with pytest.raises(SurrogateError, match="without labelled frames"):
        unfitted.fit([])
    gold = bulk("Au", "fcc", a=4.08)
    gold.calc = EMT()
    with pytest.raises(SurrogateError, match=r"atomic numbers \[79\]"):
        unfitted.fit([Frame.from_atoms(gold, gold.get_potential_energy(), gold.get_forces())])
    atoms = cell()
    with pytest.raises(ValueError, match="not finite"):
        Frame.from_atoms(atoms, float("nan"), np.zeros((len(atoms), 3)))
    with pytest.raises(ValueError, match="forces have shape"):
        Frame.from_atoms(atoms, 0.0, np.zeros((2, 3)))


def test_force_z_scores_divide_each_component_error_by_its_atoms_spread_per_component() -> None:
    from surrogates.mlip import CommitteePrediction, force_z_scores

    mean = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    spread = np.array([[0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the second atom: members agree
    prediction = CommitteePrediction(np.zeros(2), np.stack([mean + spread, mean - spread]), np.zeros((2, 6)))
    true = mean - np.array([[0.1, 0.2, 0.0], [5.0, 5.0, 5.0]])

    z = force_z_scores(prediction, true)

    # forces_std of atom 0 is 0.3 (RMS of the members' deviation vectors): 0.3 / sqrt(3) per component.
    assert z == pytest.approx(np.array([0.1, 0.2, 0.0]) / (0.3 / np.sqrt(3)))
