"""Pre-relaxation before DFT: fewer DFT ionic steps, recorded in the metadata, bad options refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import BaseCalculator
from ase.calculators.emt import EMT
from pymatgen.io.ase import AseAtomsAdaptor

from loop.build import build_oracle
from loop.candidate import Candidate
from loop.config import CampaignConfig
from loop.errors import ConfigError
from loop.structure_codec import structure_to_params
from oracles.dft import DFTRunner, oracle_from_config
from oracles.dft_job import JobSettings
from oracles.prerelax import PreRelaxation
from surrogates.universal import universal_calculator


def rattled_cu3au(seed: int = 0) -> Candidate:
    """L1_2 Cu3Au, strained 4% and rattled, far from its EMT minimum."""
    atoms = bulk("Cu", "fcc", a=3.75 * 1.04, cubic=True)
    atoms.symbols[0] = "Au"
    atoms.rattle(0.15, seed=seed)
    return Candidate(structure_to_params(AseAtomsAdaptor.get_structure(atoms), "L1_2"))


def context(tmp_path: Path, potentials: Callable[..., BaseCalculator] | None = None) -> SimpleNamespace:
    """A build context; with ``potentials``, one that loads universal potentials too."""
    offered = {} if potentials is None else {"universal_calculator": potentials}
    return SimpleNamespace(campaign=SimpleNamespace(name="pre"), resolve=lambda p: tmp_path / p, **offered)


def test_pre_relaxed_candidate_takes_fewer_dft_steps_and_says_so(tmp_path: Path) -> None:
    settings = JobSettings(fmax_ev_per_a=0.01)
    plain = DFTRunner(settings, tmp_path / "plain").evaluate(rattled_cu3au())
    prerelaxation = PreRelaxation(EMT(), "emt", optimizer="FIRE", fmax_ev_per_a=0.05, steps=500)
    pre = DFTRunner(settings, tmp_path / "pre", prerelaxation=prerelaxation).evaluate(rattled_cu3au())

    record = pre.metadata["prerelax"]
    assert record["model"] == "emt" and record["used"] and record["converged"]
    assert record["steps"] > 0 and record["wall_s"] > 0
    assert pre.metadata["n_steps"] < plain.metadata["n_steps"]  # the DFT ionic steps
    assert pre.metadata["wall_s"] > 0 and plain.metadata["prerelax"] is None
    assert pre.metadata["settings"]["prerelax"]["fmax_ev_per_a"] == 0.05
    # Same minimum either way; the candidate's own structure is still the initial one.
    e_pre = pre.measurements["energy_per_atom"].value
    assert e_pre == pytest.approx(plain.measurements["energy_per_atom"].value, abs=2e-3)
    assert pre.metadata["initial_structure"] == plain.metadata["initial_structure"]


def test_chgnet_pre_relaxation_from_the_campaign_file_reaches_the_same_emt_minimum(tmp_path: Path) -> None:
    pytest.importorskip("chgnet", reason="CHGNet is not installed (pip install chgnet)")
    options = {"prerelax": "chgnet", "prerelax_steps": 100, "prerelax_fmax": 0.1, "fmax": 0.01}
    oracle = oracle_from_config(options, context(tmp_path, universal_calculator))
    result = oracle.evaluate(rattled_cu3au(seed=1))

    record = result.metadata["prerelax"]
    assert record["model"] == "chgnet" and 0 < record["steps"] <= 100 and record["wall_s"] > 0
    assert result.metadata["n_steps"] > 0 and result.metadata["settings"]["prerelax"]["model"] == "chgnet"
    frame = result.frame
    assert frame is not None and np.abs(frame.forces).max() < 0.01  # DFT (EMT) finished the job


def dft_campaign(tmp_path: Path, prerelax: str) -> CampaignConfig:
    """A structure campaign whose DFT oracle pre-relaxes with ``prerelax``."""
    return CampaignConfig.model_validate(
        {
            "campaign": {"name": "pre", "seed": 1, "ledger": str(tmp_path / "ledger.db")},
            "space": {"generator": {"type": "structures", "elements": ["Cu", "Au"], "max_atoms": 2}},
            "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize", "unit": "eV/atom"}],
            "oracle": {"type": "dft", "prerelax": prerelax, "workdir": str(tmp_path / "runs")},
            "stopping": {"max_experiments": 2},
        }
    )


def test_a_campaign_builds_its_dft_oracle_with_the_universal_potential(tmp_path: Path) -> None:
    pytest.importorskip("chgnet", reason="CHGNet is not installed (pip install chgnet)")
    oracle = build_oracle(dft_campaign(tmp_path, "chgnet"), None)
    assert isinstance(oracle, DFTRunner) and oracle.prerelaxation is not None
    assert oracle.prerelaxation.name == "chgnet" and oracle.prerelaxation.optimizer == "FIRE"


def test_a_campaign_offers_its_plug_in_builders_the_universal_potentials(tmp_path: Path) -> None:
    # The DFT builder asks the campaign's build context, which loads by name (here: none such).
    with pytest.raises(ConfigError, match=r"oracle.prerelax: unknown universal model 'nope'; known: \["):
        build_oracle(dft_campaign(tmp_path, "nope"), None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prerelax": "nope"}, r"oracle.prerelax: unknown universal model 'nope'; known: \["),
        ({"prerelax": "chgnet", "prerelax_steps": 0}, r"oracle.prerelax_steps"),
        ({"prerelax": "chgnet", "prerelax_steps": 10**6}, r"oracle.prerelax_steps"),
        ({"prerelax": "chgnet", "prerelax_fmax": -1}, r"oracle.prerelax_fmax"),
        ({"prerelax": "chgnet", "prerelax_optimizer": "Newton"}, r"oracle.prerelax_optimizer: ASE has no"),
        ({"prerelax": "chgnet", "prerelax_device": "tpu"}, r"oracle.prerelax_device"),
        ({"prerelax": "chgnet", "mode": "single_point"}, r"oracle.prerelax: 'chgnet' would change"),
    ],
)
def test_bad_pre_relaxation_options_are_refused_at_build_time(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        oracle_from_config(options, context(tmp_path, universal_calculator))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_absent_weights_fail_the_build_with_the_universal_models_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mace", reason="mace-torch is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    options = {"prerelax": "mace-mp", "prerelax_options": {"model": "small"}}
    with pytest.raises(
        ConfigError, match=r"oracle.prerelax: universal model 'mace-mp': weights 'small' are not"
    ):
        oracle_from_config(options, context(tmp_path / "campaign", universal_calculator))
    assert not (tmp_path / "campaign").exists()


def test_a_builder_given_no_universal_potentials_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"oracle.prerelax: no universal potentials were given"):
        oracle_from_config({"prerelax": "chgnet"}, context(tmp_path))


class NaNEMT(EMT):
    """EMT whose energy comes out NaN: a potential that wrecks the structure."""

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().calculate(*args, **kwargs)
        self.results["energy"] = float("nan")


def test_a_pre_relaxation_that_goes_wrong_is_dropped_and_dft_starts_from_the_candidate(
    tmp_path: Path,
) -> None:
    prerelaxation = PreRelaxation(NaNEMT(), "broken", steps=3)
    result = DFTRunner(JobSettings(), tmp_path, prerelaxation=prerelaxation).evaluate(rattled_cu3au())
    record = result.metadata["prerelax"]
    assert record["used"] is False and "not finite" in record["reason"] and record["steps"] <= 3
    assert np.isfinite(result.measurements["energy_per_atom"].value)
