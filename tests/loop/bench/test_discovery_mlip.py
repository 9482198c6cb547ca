"""The discovery benchmark's MLIP-based variants on a tiny Cu-Au pool."""

from __future__ import annotations

import math
from concurrent.futures import Executor
from pathlib import Path

import pytest
import torch
from ase.data import chemical_symbols

from loop.bench.discovery import DiscoveryProtocol, load_truth, run_variant
from loop.bench.discovery_mlip import EMTFrames, committee_probe, keys_pool, references
from loop.structures import StructureSpaceOptions
from surrogates.mlip import MACESettings

CUAU = StructureSpaceOptions(elements=["Cu", "Au"], lattice=["fcc"], max_atoms=4)
TINY = MACESettings(channels=8, interactions=1, epochs=4, warm_epochs=1, min_steps=2, r_max=4.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("discovery-mlip")


@pytest.mark.slow
def test_gp_on_chgnet_descriptors_runs_the_protocol(workdir: Path) -> None:
    pytest.importorskip("chgnet")
    protocol = DiscoveryProtocol(CUAU, seeds=(0,), budget=15, batch_size=5, initial=10)
    truth = load_truth(protocol, workdir)
    run = run_variant("gp_chgnet_thompson", truth, protocol, 0)
    assert run["evaluations"] == 15 and len(run["decision_s"]) == 1
    # One row per candidate, the atomic fractions then the embedding (cached beside the pool).
    featurised = truth.with_inputs("chgnet")
    assert featurised.X.shape == (len(truth.pool), 2 + 64)
    assert featurised.feature_names[:3] == ["x_Au", "x_Cu", "chgnet_0"]
    run = run_variant("gp_chgnet_hull_thompson", truth, protocol, 0)
    assert run["evaluations"] == 15
    (cache,) = workdir.glob("pool-*.chgnet.npz")
    assert cache.stat().st_size > 0


@pytest.mark.slow
def test_the_chgnet_prior_inputs_end_with_chgnet_formation_energy_and_run_the_protocol(workdir: Path) -> None:
    pytest.importorskip("chgnet")
    protocol = DiscoveryProtocol(CUAU, seeds=(0,), budget=20, batch_size=5, initial=10)
    truth = load_truth(protocol, workdir)
    inputs = truth.chgnet_prior_inputs()
    pairs = truth.pool
    # pair features, the embedding without its fractions, CHGNet's formation energy last
    assert inputs.X.shape == (len(pairs), pairs.X.shape[1] + 64 + 1)
    assert inputs.feature_names[: pairs.X.shape[1]] == pairs.feature_names
    assert inputs.feature_names[-1] == "chgnet_formation_energy_per_atom"
    cheap = inputs.X[:, -1]
    assert cheap.tolist() == truth.chgnet_formation_energies().tolist()
    # CHGNet and EMT agree on the sign of mixing in Cu-Au: the prior carries information
    assert float(torch.corrcoef(torch.stack([cheap, truth.energies]))[0, 1]) > 0.5
    run = run_variant("gp_chgnet_prior_hull_membership", truth, protocol, 0)
    assert run["evaluations"] == 20 and len(run["decision_s"]) == 2


@pytest.mark.slow
def test_committee_probe_times_fit_and_scoring(workdir: Path, mlip_workers: Executor) -> None:
    protocol = DiscoveryProtocol(CUAU)
    truth = load_truth(protocol, workdir)
    # The committee learns EMT frames: relaxed structures at the energies of the ground truth.
    frames = EMTFrames(keys_pool(truth.pool), [0, 1], references(truth.path))()
    for index, frame in zip([0, 1], frames.frames, strict=True):
        reference = sum(frames.references_ev_per_atom[chemical_symbols[z]] for z in frame.numbers)
        expected = float(truth.energies[index])
        assert (frame.energy - reference) / len(frame.numbers) == pytest.approx(expected, abs=1e-6)
    out = committee_probe(
        truth.pool, truth.energies, truth.path, 5, 3, settings=TINY, executor=mlip_workers, refit=2
    )
    assert (out["observations"], out["frames"], out["scored"]) == (5, 5, 3)
    assert out["free_candidates"] == len(truth.pool) - 5
    assert out["seconds_per_decision_estimate"] == pytest.approx(
        out["fit_s"] + out["score_s"] / 3 * out["free_candidates"]
    )
    alone = out["one_by_one"]
    assert alone["scored"] == 3 and alone["score_s_per_candidate"] == pytest.approx(alone["score_s"] / 3)
    # Relaxed together or each alone, the candidates end at the same structures and energies.
    assert alone["max_member_energy_difference_ev_per_atom"] < 1e-6
    # The next round: 2 more frames, and the same 3 candidates relaxed from the first fit's
    # structures and from the candidates; each way counts its force evaluations.
    second = out["second_round"]
    assert second["observations"] == 7
    for way in ("restarted", "from_the_candidates"):
        assert second[way]["force_evaluations"] >= 3  # at least the convergence test of each
    assert out["force_evaluations"] >= 3
    gap = second["mean_energy_difference_ev_per_atom"]
    assert math.isfinite(gap["max"]) and 0 <= gap["median"] <= gap["max"]
