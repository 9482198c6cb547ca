"""Structure campaigns with learned surrogates: the MACE committee ([surrogate] type = "committee")
and the GP on a universal model's embedding (descriptors = "chgnet"), end to end on Cu-Au fcc
orderings with the EMT oracle; bad options; a committee campaign killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
import torch
from ase import Atoms

from loop.campaign import Campaign
from loop.config import parse_config
from loop.errors import ConfigError
from loop.ledger import Ledger
from oracles.dft import DFTRunner
from oracles.dft_job import JobSettings, execute
from surrogates.committee_surrogate import CommitteeSurrogate
from surrogates.ensemble_posterior import MemberPosterior
from tests.helpers import wait_for

TINY_MACE = {"channels": 8, "interactions": 1, "epochs": 4, "warm_epochs": 1, "min_steps": 2, "r_max": 4.0}
COMMITTEE = {"type": "committee", "size": 2, "workers": 1, "relax_steps": 3, "fmax": 0.1, "mace": TINY_MACE}


class InProcessEMTRelax(DFTRunner):
    """The DFT runner relaxing positions with EMT, each job in this process: no child start-up."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(JobSettings(mode="relax", relax_cell=False, fmax_ev_per_a=0.1, steps=20), workdir)

    def run(self, atoms: Atoms, name: str) -> tuple[dict[str, Any], Path]:
        folder = self._new_folder(name)
        outcome = execute(atoms, self.settings, folder)
        assert outcome["status"] == "ok", outcome
        return outcome, folder


def _campaign(surrogate: dict[str, Any], max_experiments: int = 8, **generator: Any) -> dict[str, Any]:
    return {
        "campaign": {"name": "cuau", "seed": 1, "ledger": "ledger.db"},
        "space": {"generator": {"type": "structures", "elements": ["Cu", "Au"], "max_atoms": 4, **generator}},
        "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}],
        "surrogate": surrogate,
        "acquisition": {"type": "ucb", "batch_size": 2, "initial_designs": 4},
        "oracle": {"type": "dft", "relax_cell": False, "fmax": 0.1, "steps": 20, "capacity": 1},
        "stopping": {"max_experiments": max_experiments},
    }


def _evaluations(ledger_path: Path) -> list[Any]:
    with Ledger(ledger_path, create=False) as ledger:
        return ledger.evaluations(int(ledger.campaign("cuau")["id"]))


def _started(ledger_path: Path) -> bool:
    """The run has written its campaign row (the file alone may hold only the schema)."""
    if not ledger_path.exists():
        return False
    with Ledger(ledger_path, create=False) as ledger:
        return "cuau" in ledger.campaign_names()


def test_committee_campaign_runs_and_scores_the_pool_with_its_members(
    tmp_path: Path, mlip_workers: Executor
) -> None:
    config = parse_config(_campaign(COMMITTEE), tmp_path)
    campaign = Campaign.open(config, oracle=InProcessEMTRelax(tmp_path / "runs"))
    assert isinstance(campaign.surrogate, CommitteeSurrogate) and campaign.pool is not None
    campaign.surrogate.committee.executor = mlip_workers  # the tests' warm training processes
    try:
        report = campaign.run()
        pool_keys = campaign.pool.X[:5]
        posterior = campaign.surrogate.posterior(pool_keys.unsqueeze(-2))  # 5 t-batches of q = 1
        cycles = campaign.ledger.cycles(campaign.id)
    finally:
        campaign.close()

    assert report.experiments == 8 and report.stop_reason is not None
    assert pool_keys.shape == (5, 3)  # x_Au, x_Cu, then the structure key
    assert campaign.pool.feature_names == ["x_Au", "x_Cu", "structure_key"]
    assert isinstance(posterior, MemberPosterior)
    assert posterior.values.shape == (5, 2, 1, 1)  # batch x members x q x m
    assert torch.allclose(posterior.mean, posterior.values.mean(dim=-3))
    assert torch.allclose(posterior.variance, posterior.values.var(dim=-3))
    evaluations = _evaluations(tmp_path / "ledger.db")
    assert [e.status for e in evaluations] == ["done"] * 8
    fitted = [c for c in cycles if c.surrogate is not None]
    assert len(fitted) == 2 and all(c.surrogate["type"] == "CommitteeSurrogate" for c in fitted)
    assert [c.surrogate["n_train"] for c in fitted] == [4, 6]
    chosen = [p for c in fitted for p in (c.chosen or [])]
    assert len(chosen) == 4 and all(p["mean"] is not None and p["std"] is not None for p in chosen)


def test_gp_on_a_universal_models_embedding_runs_with_the_hull_aware_acquisition(tmp_path: Path) -> None:
    pytest.importorskip("chgnet")
    settings = _campaign({"type": "gp", "descriptors": "chgnet"}, max_experiments=6, cache="candidates.json")
    settings["acquisition"]["type"] = "hull_thompson"
    config = parse_config(settings, tmp_path)
    campaign = Campaign.open(config, oracle=InProcessEMTRelax(tmp_path / "runs"))
    try:
        report = campaign.run()
        assert campaign.pool is not None
        features = campaign.pool.X
        summary = campaign.ledger.cycles(campaign.id)[-1].surrogate
    finally:
        campaign.close()

    assert report.experiments == 6
    # The atomic fractions (the hull's coordinates), then the embedding.
    assert features.shape[1] == 2 + 64 and features.std(dim=0).max() > 0
    assert torch.allclose(features[:, :2].sum(dim=1), torch.ones(features.shape[0], dtype=features.dtype))
    assert (tmp_path / "candidates.chgnet.npz").is_file(), "the embedding is kept beside the pool's cache"
    assert summary is not None and summary["type"] == "GPSurrogate" and len(summary["lengthscales"]) == 66


def test_gp_with_a_universal_potentials_prior_learns_the_correction_to_it(tmp_path: Path) -> None:
    pytest.importorskip("chgnet")
    surrogate = {"type": "gp", "descriptors": "pairs+chgnet", "prior": "chgnet"}
    settings = _campaign(surrogate, max_experiments=6, cache="candidates.json")
    settings["acquisition"] = {
        "type": "hull_membership",
        "within_mev": 1.0,
        "batch_size": 2,
        "initial_designs": 4,
    }
    config = parse_config(settings, tmp_path)
    campaign = Campaign.open(config, oracle=InProcessEMTRelax(tmp_path / "runs"))
    try:
        report = campaign.run()
        assert campaign.pool is not None
        features, names = campaign.pool.X, campaign.pool.feature_names
        candidates = campaign.pool.candidates
        summary = campaign.ledger.cycles(campaign.id)[-1].surrogate
    finally:
        campaign.close()

    assert report.experiments == 6
    # pair features (fractions first), the embedding, CHGNet's formation energy last
    assert names[:2] == ["x_Au", "x_Cu"] and names[-1] == "chgnet_formation_energy_per_atom"
    assert [n for n in names if n.startswith("chgnet_")][:2] == ["chgnet_0", "chgnet_1"]
    assert features.shape[1] == len(names) and len(names) > 2 + 64 + 1
    # the column is CHGNet's energy per atom less its elemental references' (fcc Au and Cu)
    from ase.build import bulk

    from oracles.dft import candidate_atoms
    from surrogates.universal import single_point_energies

    first = candidate_atoms(candidates[0])
    au, cu = single_point_energies("chgnet", [bulk("Au"), bulk("Cu")])
    (energy,) = single_point_energies("chgnet", [first])
    expected = energy - features[0, 0].item() * au - features[0, 1].item() * cu
    assert features[0, -1].item() == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "candidates.chgnet-energy.npz").is_file(), "the energies are kept beside the pool"
    assert summary is not None and summary["prior_mean"]["column"] == len(names) - 1


def test_a_prior_is_not_offered_with_transfer(tmp_path: Path) -> None:
    settings = {**_campaign({"type": "gp", "prior": "chgnet"}), "transfer": {"campaigns": ["old"]}}
    with pytest.raises(
        ConfigError, match=r"surrogate.prior: a universal potential's prior mean is not offered"
    ):
        parse_config(settings, tmp_path)
    assert not (tmp_path / "ledger.db").exists()


def test_a_prior_whose_weights_are_absent_offline_names_the_model(tmp_path: Path, monkeypatch) -> None:
    from surrogates.base import UniversalModelUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = parse_config(_campaign({"type": "gp", "prior": "mace-mp"}), tmp_path)
    with pytest.raises(
        UniversalModelUnavailable, match=r"universal model 'mace-mp': weights .* not downloaded"
    ):
        Campaign.open(config, oracle=InProcessEMTRelax(tmp_path / "runs"))
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize(
    ("surrogate", "message"),
    [
        ({**COMMITTEE, "prior": "chgnet"}, "surrogate.prior: applies only to type = 'gp'"),
        ({"type": "gp", "prior": "gnome"}, "surrogate.prior: Input should be 'chgnet'"),
        ({**COMMITTEE, "size": 1}, "surrogate.size: Input should be greater than or equal to 2"),
        ({**COMMITTEE, "kernel": "rbf"}, "surrogate.kernel: applies only to type = 'gp'"),
        ({"type": "gp", "relax_steps": 5}, "surrogate.relax_steps: applies only to type = 'committee'"),
        ({**COMMITTEE, "mace": {"channels": 0}}, "surrogate.mace: invalid MACE settings: channels = 0"),
        ({**COMMITTEE, "mace": {"chanels": 8}}, "surrogate.mace: unknown key(s) ['chanels']"),
        ({**COMMITTEE, "prerelax": "gnome"}, "surrogate.prerelax: Input should be 'chgnet'"),
        ({**COMMITTEE, "baseline": "mace"}, "surrogate.baseline: 'chgnet' or an ASE calculator"),
        ({**COMMITTEE, "fmax": -0.1}, "surrogate.fmax: Input should be greater than 0"),
        ({"type": "gp", "descriptors": "soap"}, "surrogate.descriptors: Input should be 'pairs'"),
        ({**COMMITTEE, "device": "tpu"}, "surrogate.device: Input should be 'cpu' or 'cuda'"),
    ],
)
def test_bad_surrogate_options_name_their_key_and_write_nothing(
    tmp_path: Path, surrogate: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(_campaign(surrogate), tmp_path)
    assert message in str(raised.value)
    assert str(raised.value).count(";") == 0, "one problem, one message"
    assert not (tmp_path / "ledger.db").exists()


def test_structure_surrogates_need_a_structure_pool_and_formation_energy(tmp_path: Path) -> None:
    parameters = {"parameters": [{"name": "x", "type": "continuous", "lower": 0.0, "upper": 1.0}]}
    with pytest.raises(ConfigError, match=r"surrogate.type: 'committee' needs a structure pool"):
        parse_config({**_campaign(COMMITTEE), "space": parameters}, tmp_path)
    with pytest.raises(
        ConfigError, match=r"surrogate.descriptors: learned descriptors need a structure pool"
    ):
        parse_config({**_campaign({"descriptors": "chgnet"}), "space": parameters}, tmp_path)
    with pytest.raises(
        ConfigError, match=r"surrogate.prior: a universal potential's prior needs a structure pool"
    ):
        parse_config({**_campaign({"prior": "chgnet"}), "space": parameters}, tmp_path)
    energy = [{"name": "energy_per_atom", "direction": "minimize"}]
    with pytest.raises(
        ConfigError, match=r"'committee' predicts the one objective 'formation_energy_per_atom'"
    ):
        parse_config({**_campaign(COMMITTEE), "objectives": energy}, tmp_path)


def test_a_baseline_that_cannot_be_built_fails_before_the_ledger_is_opened(tmp_path: Path) -> None:
    config = parse_config(_campaign({**COMMITTEE, "baseline": "no_such_module:Calculator"}), tmp_path)
    with pytest.raises(ConfigError, match=r"surrogate.baseline: baseline 'no_such_module:Calculator' cannot"):
        Campaign.open(config)
    assert not (tmp_path / "ledger.db").exists()


CLI_CAMPAIGN = """
[campaign]
name = "cuau"
seed = 1
ledger = "ledger.db"

[space.generator]
type = "structures"
elements = ["Cu", "Au"]
max_atoms = 4

[[objectives]]
name = "formation_energy_per_atom"
direction = "minimize"

[surrogate]
type = "committee"
size = 2
workers = 1
relax_steps = 3
fmax = 0.1
mace = { channels = 8, interactions = 1, epochs = 4, warm_epochs = 1, min_steps = 2, r_max = 4.0 }

[acquisition]
type = "ucb"
batch_size = 2
initial_designs = 4

[oracle]
type = "dft"
relax_cell = false
fmax = 0.1
steps = 20
capacity = 1
workdir = "runs"

[stopping]
max_experiments = 8
"""


@pytest.mark.slow
def test_committee_campaign_resumes_after_sigkill_with_nothing_lost_or_repeated(tmp_path: Path) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(CLI_CAMPAIGN)
    ledger_path = tmp_path / "ledger.db"
    command = [sys.executable, "-m", "loop.cli", "run", str(path), "--quiet"]

    def fitting() -> bool:
        """The initial designs are recorded and nothing is in flight: the committee is training."""
        if not _started(ledger_path):
            return False
        statuses = Counter(e.status for e in _evaluations(ledger_path))
        return statuses["done"] >= 4 and statuses["proposed"] == statuses["submitted"] == 0

    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_for(fitting, timeout_s=300)
        os.killpg(process.pid, signal.SIGKILL)  # the run and every process it started
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    before = {e.candidate_id: (e.status, dict(e.values)) for e in _evaluations(ledger_path)}
    assert len(before) < 8 and all(status == "done" for status, _ in before.values())

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    evaluations = _evaluations(ledger_path)
    by_id = {e.candidate_id: e for e in evaluations}
    assert len(evaluations) == len(by_id) == 8, "the budget is spent, each candidate once"
    assert all(e.status == "done" for e in evaluations), "every evaluation finished"
    assert {cid: ("done", dict(by_id[cid].values)) for cid in before} == before, "nothing recorded was lost"
    folders = (tmp_path / "runs" / "cuau").iterdir()
    jobs = sorted(p.name for p in folders if not p.name.startswith("reference"))  # elemental references
    assert jobs == sorted(by_id), "the oracle ran each candidate exactly once (no '-2' folder)"


def test_the_configs_model_names_are_the_universal_models_known() -> None:
    from typing import get_args

    from loop.config import SurrogateSection, UniversalModel
    from surrogates.universal import KNOWN_MODELS

    assert sorted(get_args(UniversalModel)) == sorted(KNOWN_MODELS)
    descriptors = get_args(SurrogateSection.model_fields["descriptors"].annotation)
    embedding = [n for n, m in KNOWN_MODELS.items() if m.embedding]
    assert sorted(descriptors) == sorted(["pairs", *embedding, *(f"pairs+{n}" for n in embedding)])
