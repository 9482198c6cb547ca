"""The committee surrogate: its posterior is the members' formation energies of relaxed candidates;
structure keys; the members' posterior under every sampler; learned descriptors, cached."""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.sampling import SobolQMCNormalSampler
from botorch.sampling.index_sampler import IndexSampler
from botorch.utils.datasets import SupervisedDataset
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from loop.acquisition import Acquisition
from loop.frame import Frame
from loop.hull_acquisition import HullTarget
from surrogates.base import SurrogateError
from surrogates.committee_surrogate import CommitteeSurrogate, TrainingSet
from surrogates.ensemble_posterior import MemberPosterior
from surrogates.mlip import MACESettings, MLIPCommittee
from surrogates.relaxation import RelaxSettings, relax
from surrogates.structure_keys import StructureKeys

TINY = MACESettings(channels=8, interactions=1, epochs=4, warm_epochs=1, min_steps=2, r_max=4.0)


def _cuau_structures() -> list[Structure]:
    """Four small Cu-Au cells: the elements and two orderings."""
    cells = [bulk("Cu", "fcc", 3.61), bulk("Au", "fcc", 4.08)]
    for symbols in (["Cu", "Au", "Cu", "Au"], ["Cu", "Cu", "Cu", "Au"]):
        atoms = bulk("Cu", "fcc", 3.8, cubic=True)
        atoms.set_chemical_symbols(symbols)
        cells.append(atoms)
    return [AseAtomsAdaptor.get_structure(a) for a in cells]


def _emt_training(structures: list[Structure]) -> TrainingSet:
    frames = []
    for i, structure in enumerate(structures):
        atoms = structure.to_ase_atoms()
        atoms.rattle(0.02, seed=i)
        atoms.calc = EMT()
        frames.append(
            Frame.from_atoms(
                atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(), f"f{i}"
            )
        )
    references = {"Cu": float(frames[0].energy), "Au": float(frames[1].energy)}
    return TrainingSet(frames, references)


@pytest.fixture(scope="module")
def fitted(mlip_workers: Executor) -> tuple[CommitteeSurrogate, StructureKeys, list[Structure]]:
    structures = _cuau_structures()
    keys = StructureKeys()
    X = torch.tensor(keys.features(structures))
    committee = MLIPCommittee(["Cu", "Au"], TINY, size=3, executor=mlip_workers)
    surrogate = CommitteeSurrogate(committee, keys, lambda: _emt_training(structures), RelaxSettings(steps=2))
    surrogate.fit(SupervisedDataset(X, torch.zeros(len(X), 1), feature_names=["k"], outcome_names=["y"]))
    return surrogate, keys, structures


def test_structure_keys_name_each_distinct_structure_once() -> None:
    structures = _cuau_structures()
    keys = StructureKeys()

    first = keys.features(structures)
    again = keys.features(list(reversed(structures)))

    assert first.shape == (4, 1) and first[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert again[:, 0].tolist() == [3.0, 2.0, 1.0, 0.0] and len(keys) == 4
    assert keys.structure(2).composition == structures[2].composition
    assert keys.atoms(3).get_chemical_formula() == structures[3].to_ase_atoms().get_chemical_formula()
    with pytest.raises(IndexError, match="no structure has key 4"):
        keys.structure(4)


def test_structure_keys_follow_the_atomic_fractions_of_the_chemical_system() -> None:
    structures = _cuau_structures()
    keys = StructureKeys(["Cu", "Au"])
    rows = keys.features(structures)
    assert keys.feature_names == ["x_Au", "x_Cu", "structure_key"]
    assert rows[:, -1].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert rows[:, :2].tolist() == [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.25, 0.75]]
    with pytest.raises(ValueError, match=r"structure holds \['Au'\], outside the chemical system"):
        StructureKeys(["Cu", "Ni"]).features(structures[1:2])


def test_hull_aware_picks_read_compositions_beside_the_committees_keys(
    fitted: tuple[CommitteeSurrogate, StructureKeys, list[Structure]],
) -> None:
    # Rows of fractions then keys: the ensemble reads the key (last column), the hull-aware
    # acquisition the fractions. Every draw is one member; each pick is that member's
    # deepest candidate below the hull of the evaluated elements (0 at every composition).
    surrogate, keys, structures = fitted
    rows = torch.tensor(StructureKeys(["Cu", "Au"]).features(structures))
    assert torch.equal(rows[:, -1], torch.tensor(keys.features(structures))[:, 0])
    members = torch.stack([surrogate.fitted.member_energies(k) for k in range(4)])  # 4 x s
    hull = HullTarget.from_feature_names(["Au", "Cu"], ["x_Au", "x_Cu", "structure_key"])
    picks = Acquisition("hull_thompson", [-1.0], hull=hull).select_from_pool(
        surrogate, rows[2:], 2, rows[:2], torch.zeros(2, 1, dtype=torch.double), None, seed=0
    )
    assert sorted(p.index for p in picks) == [0, 1]
    first = picks[0]
    assert any(
        first.value == pytest.approx(-float(members[2 + first.index, s]), abs=1e-9)
        and int(torch.argmin(members[2:, s])) == first.index
        for s in range(members.shape[1])
    )


def test_posterior_is_the_members_formation_energies_of_relaxed_candidates(
    fitted: tuple[CommitteeSurrogate, StructureKeys, list[Structure]],
) -> None:
    surrogate, _keys, _ = fitted
    X = torch.arange(4, dtype=torch.double).reshape(4, 1, 1)  # 4 t-batches of one candidate

    posterior = surrogate.posterior(X)

    assert isinstance(posterior, MemberPosterior)
    assert posterior.values.shape == (4, 3, 1, 1)  # batch x s members x q x m
    members = torch.stack([surrogate.fitted.member_energies(k) for k in range(4)])  # 4 x s
    assert torch.allclose(posterior.mean.reshape(4), members.mean(dim=1))
    assert torch.allclose(posterior.variance.reshape(4), members.var(dim=1))
    # Each member's value is its energy of the relaxed structure against the references.
    relaxed = surrogate.fitted.structures[3]
    energies = surrogate.committee.predict(relaxed).energy
    references = {"Cu": surrogate.fitted.references["Cu"], "Au": surrogate.fitted.references["Au"]}
    expected = (energies - sum(references[s] for s in relaxed.get_chemical_symbols())) / len(relaxed)
    assert np.allclose(members[3].numpy(), expected)
    mean, variance = surrogate.predict(torch.arange(4, dtype=torch.double).reshape(4, 1))
    assert mean.shape == variance.shape == (4, 1)


def test_many_candidates_are_relaxed_and_scored_together_as_one_by_one(
    fitted: tuple[CommitteeSurrogate, StructureKeys, list[Structure]],
) -> None:
    surrogate, keys, structures = fitted
    committee = surrogate.committee
    atoms = [s.to_ase_atoms() for s in structures]
    for a, many in zip(atoms, committee.predict_many(atoms, chunk_size=3), strict=True):  # two chunks
        one = committee.predict(a)
        assert np.allclose(many.energy, one.energy) and np.allclose(many.forces, one.forces)
        assert np.allclose(many.stress, one.stress) and many.forces.shape == (3, len(a), 3)
    # What relaxing and scoring need, without the rest: the mean forces, the members' energies.
    means, energies = (
        committee.mean_forces_many(atoms, chunk_size=3),
        committee.energies_many(atoms, chunk_size=3),
    )
    assert energies.shape == (4, 3)
    for a, mean, energy in zip(atoms, means, energies, strict=True):
        one = committee.predict(a)
        assert np.allclose(mean, one.forces.mean(axis=0)) and np.allclose(energy, one.energy)
    # A fresh ensemble of the same fit: scoring all four relaxes them together (positions only,
    # the committee's mean forces), ending where the committee's calculator takes each alone.
    ensemble = surrogate.fresh_ensemble()
    ensemble.posterior(torch.arange(4, dtype=torch.double).reshape(4, 1, 1))
    for k in range(4):
        alone = relax(keys.atoms(k), committee.calculator(), surrogate.relax)
        assert np.allclose(ensemble.structures[k].positions, alone.positions, atol=1e-8)
        assert torch.allclose(ensemble.member_energies(k), surrogate.fitted.member_energies(k))
    one_by_one = surrogate.fresh_ensemble(together=False)
    assert torch.allclose(one_by_one.member_energies(2), ensemble.member_energies(2))


def test_the_next_fit_relaxes_each_candidate_from_where_the_last_one_left_it(mlip_workers: Executor) -> None:
    structures = _cuau_structures()
    candidates = []
    for i, structure in enumerate(structures[2:]):  # the orderings, moved off their symmetric sites
        atoms = structure.to_ase_atoms()
        atoms.rattle(0.05, seed=10 + i)
        candidates.append(AseAtomsAdaptor.get_structure(atoms))
    keys = StructureKeys()
    X = torch.tensor(keys.features(structures + candidates))
    committee = MLIPCommittee(["Cu", "Au"], TINY, size=2, executor=mlip_workers)
    settings = RelaxSettings(steps=3, fmax_ev_per_a=1e-4)  # never converged in 3 steps
    surrogate = CommitteeSurrogate(committee, keys, lambda: _emt_training(structures), settings)
    dataset = SupervisedDataset(X, torch.zeros(len(X), 1), feature_names=["k"], outcome_names=["y"])
    rows = torch.tensor([[4.0], [5.0]], dtype=torch.double)
    try:
        surrogate.fit(dataset)
        surrogate.predict(rows)
        first = surrogate.fitted.structures
        assert surrogate.summary()["relax_force_evaluations"] == 2 * 4  # 3 steps, then the test
        surrogate.fit(dataset)
        restarted, fresh = surrogate.fitted.structures, surrogate.fresh_ensemble(restart=False).structures
        for k in (4, 5):
            assert np.array_equal(restarted.start(k).positions, first[k].positions)
            assert np.array_equal(fresh.start(k).positions, keys.atoms(k).positions)
            assert not np.allclose(first[k].positions, keys.atoms(k).positions)
        # A candidate the last fit did not relax starts as it is.
        assert np.array_equal(restarted.start(3).positions, keys.atoms(3).positions)
    finally:
        surrogate.close()


def test_candidates_are_relaxed_once_per_fit(
    fitted: tuple[CommitteeSurrogate, StructureKeys, list[Structure]],
) -> None:
    surrogate, keys, _structures = fitted
    relaxed = surrogate.fitted.structures
    first = relaxed[2]

    surrogate.predict(torch.tensor([[2.0], [2.0], [3.0]], dtype=torch.double))

    assert relaxed[2] is first, "a candidate is relaxed once per fit"
    moved = np.abs(first.positions - keys.atoms(2).positions).max()
    assert np.isfinite(moved)


def test_every_sampler_draws_members_and_scalarisation_keeps_them(
    fitted: tuple[CommitteeSurrogate, StructureKeys, list[Structure]],
) -> None:
    surrogate, _, _ = fitted
    X = torch.tensor([[[1.0], [2.0]], [[3.0], [0.0]]], dtype=torch.double)  # 2 batches x q = 2
    members = surrogate.posterior(X).values  # 2 x s x 2 x 1

    sign = ScalarizedPosteriorTransform(torch.tensor([-1.0], dtype=torch.double))
    flipped = surrogate.posterior(X, posterior_transform=sign)
    assert torch.allclose(flipped.values, -members)

    for sampler in (SobolQMCNormalSampler(torch.Size([16]), seed=0), IndexSampler(torch.Size([16]), seed=0)):
        samples = sampler(surrogate.posterior(X))
        assert samples.shape == (16, 2, 2, 1)
        for draw in samples:
            # Every draw is one member's values at every candidate of a batch.
            for b in range(2):
                assert any(torch.allclose(draw[b], members[b, s]) for s in range(members.shape[1]))


def test_fit_without_labelled_frames_says_what_is_missing(mlip_workers: Executor) -> None:
    committee = MLIPCommittee(["Cu", "Au"], TINY, size=2, executor=mlip_workers)
    surrogate = CommitteeSurrogate(committee, StructureKeys(), lambda: TrainingSet([], {}))
    dataset = SupervisedDataset(
        torch.zeros(2, 1), torch.zeros(2, 1), feature_names=["k"], outcome_names=["y"]
    )

    with pytest.raises(SurrogateError, match=r"no labelled frame .* type = 'dft'"):
        surrogate.fit(dataset)
    with pytest.raises(SurrogateError, match="not been fitted"):
        surrogate.posterior(torch.zeros(1, 1, 1))


def test_embedding_rows_are_computed_once_and_kept_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("chgnet")
    from surrogates import descriptors
    from surrogates.descriptors import EmbeddingFeaturizer

    structures = _cuau_structures()[:2]
    cache = tmp_path / "candidates.chgnet.npz"
    first = EmbeddingFeaturizer("chgnet", cache).features(structures)
    assert first.shape == (2, 64) and cache.is_file()

    def no_model(*_: object, **__: object) -> np.ndarray:
        raise AssertionError("the model ran for a structure already in the cache")

    monkeypatch.setattr(descriptors, "structure_embedding", no_model)
    reread = EmbeddingFeaturizer("chgnet", cache)
    assert np.array_equal(reread.features(list(reversed(structures))), first[::-1])
    assert reread.feature_names[:2] == ["chgnet_0", "chgnet_1"]


def test_embedding_rows_lead_with_the_atomic_fractions_of_the_chemical_system(tmp_path: Path) -> None:
    # The hull-aware acquisitions read compositions from x_<element> columns; the cache keeps
    # only the embedding, so the same file serves with or without them.
    pytest.importorskip("chgnet")
    from surrogates.descriptors import EmbeddingFeaturizer

    structures = _cuau_structures()[:2]
    cache = tmp_path / "candidates.chgnet.npz"
    plain = EmbeddingFeaturizer("chgnet", cache).features(structures)
    featurizer = EmbeddingFeaturizer("chgnet", cache, elements=["Cu", "Au", "Ag"])
    rows = featurizer.features(structures)
    assert featurizer.feature_names[:4] == ["x_Ag", "x_Au", "x_Cu", "chgnet_0"]
    assert rows.shape == (2, 3 + 64) and np.array_equal(rows[:, 3:], plain)
    for row, structure in zip(rows, structures, strict=True):
        composition = structure.composition.fractional_composition
        assert row[:3].tolist() == pytest.approx([0.0, composition["Au"], composition["Cu"]])
    outside = r"structure holds \['Au'\], outside the chemical system \['Cu', 'Ni'\]"
    with pytest.raises(ValueError, match=outside):
        EmbeddingFeaturizer("chgnet", cache, elements=["Cu", "Ni"]).features(structures)
