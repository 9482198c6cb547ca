"""Multi-fidelity campaigns: ``[[oracles]]`` configuration, the policies that choose (candidate,
fidelity) pairs, whole campaigns with two emulated fidelities and with the reference lab over
HTTP as the expensive one, and a campaign killed with evaluations pending at two fidelities."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from botorch.utils.datasets import SupervisedDataset

from loop.campaign import Campaign
from loop.config import load_config, parse_config
from loop.errors import ConfigError
from loop.fidelity import Fidelities
from loop.fidelity_acquisition import FidelityPolicy, PairState
from loop.fidelity_campaign import MultiFidelityCampaign
from loop.hull_acquisition import HullTarget
from loop.ledger import EvaluationRecord, Ledger
from loop.report import campaign_status, evaluations_table
from oracles.lab import LabServer
from oracles.simulated import read_journal
from surrogates.multifidelity import MultiFidelityGP
from tests.helpers import EMULATED_LAB, robot_entry, wait_for, write_fidelity_campaign

REPO = Path(__file__).resolve().parents[2]


def _evaluations(path: Path) -> list[EvaluationRecord]:
    with Ledger(path.parent / "ledger.db") as ledger:
        return ledger.evaluations(ledger.campaign("mf")["id"])


# --- configuration ---------------------------------------------------------------------------


def _config(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(write_fidelity_campaign(tmp_path, **fields).read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["oracles"][0].update(cost=0), "oracles.0.cost: Input should be greater than 0"),
        (
            lambda c: c["oracles"][1].update(cost=float("nan")),
            "oracles.1.cost: Input should be a finite number",
        ),
        (lambda c: c["oracles"][1].update(cost=-1.0), "oracles.1.cost: Input should be greater than 0"),
        (lambda c: c["oracles"][1].update(fidelity="screen"), "oracles: fidelity names must be unique"),
        (lambda c: c["oracles"].pop(), "oracles: give two or more entries"),
        (lambda c: c.update(oracle={"type": "emulator", "function": "branin"}), "oracles: give [oracle]"),
        (lambda c: c["oracles"][0].update(cost=1.0), "oracles: ['screen', 'lab'] cost the most alike"),
        (
            lambda c: [e.update(target=True) for e in c["oracles"]],
            "oracles: only one fidelity may be the target",
        ),
        (lambda c: c["acquisition"].update(type="qlognei"), "acquisition.type: 'qlognei' chooses candidates"),
        (lambda c: c["stopping"].update(min_expected_improvement=0.1), "stopping.min_expected_improvement"),
        (lambda c: c["oracles"][0].update(noise_sd=-1), "oracles.0.noise_sd"),
        (
            lambda c: c["oracles"][1].update(task_runner="slurm"),
            "oracles.1.task_runner: Input should be 'thread' or 'dask'",
        ),
        (
            lambda c: [e.update(type="robot") for e in c["oracles"]],
            "oracles: at most one fidelity may use the robot oracle, these do: ['screen', 'lab']",
        ),
    ],
)
def test_a_bad_fidelity_configuration_is_one_error_naming_the_key(
    tmp_path: Path, change: Any, message: str
) -> None:
    data = _config(tmp_path)
    change(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ledger.db").exists()


def test_the_fidelity_kinds_need_several_oracles(tmp_path: Path) -> None:
    data = _config(tmp_path)
    data["oracle"] = {k: v for k, v in data.pop("oracles")[1].items() if k not in ("fidelity", "cost")}
    with pytest.raises(ConfigError, match=re.escape("acquisition.type: 'mf_ucb' needs several fidelities")):
        parse_config(data, base_dir=tmp_path)


def test_the_target_is_the_dearest_fidelity_unless_marked(tmp_path: Path) -> None:
    config = load_config(write_fidelity_campaign(tmp_path))
    fidelities = Fidelities.from_config(config)
    assert fidelities is not None and fidelities.target == "lab" and fidelities.names == ["screen", "lab"]
    assert [f.value for f in fidelities.levels] == [0.25, 1.0]
    data = _config(tmp_path)
    data["oracles"][0]["target"] = True
    marked = Fidelities.from_config(parse_config(data, base_dir=tmp_path))
    assert marked is not None and marked.target == "screen"


def test_a_fidelity_task_runner_is_apart_from_its_oracle_and_from_the_campaign_identity(
    tmp_path: Path,
) -> None:
    plain = load_config(write_fidelity_campaign(tmp_path))
    data = _config(tmp_path)
    data["oracles"][1]["task_runner"] = "dask"
    placed = parse_config(data, base_dir=tmp_path)
    assert placed.oracles is not None and plain.oracles is not None
    assert [e.task_runner for e in placed.oracles] == [None, "dask"]
    assert placed.oracles[1].oracle == plain.oracles[1].oracle  # not an oracle option
    assert placed.hash == plain.hash  # a campaign may move its lab to a cluster between runs
    assert placed.model_dump(mode="json")["oracles"][1]["task_runner"] == "dask"


# --- policies --------------------------------------------------------------------------------


def _state(values: list[list[float]], pending: list[list[bool]] | None = None) -> PairState:
    measured = torch.tensor(values, dtype=torch.double)
    busy = torch.tensor(pending) if pending else torch.zeros(measured.shape, dtype=torch.bool)
    return PairState(torch.isnan(measured) & ~busy, busy, measured)


def test_the_funnel_screens_everything_before_promoting_the_best() -> None:
    fidelities = Fidelities.from_costs({"cheap": 0.1, "lab": 1.0}, "lab")
    policy = FidelityPolicy("funnel", fidelities)
    nan = float("nan")
    screening = policy.select(
        None, torch.zeros(3, 1), _state([[1.0, nan], [nan, nan], [nan, nan]]), 5, None, 0
    )
    assert [(p.row, p.fidelity) for p in screening] == [(1, "cheap"), (2, "cheap"), (0, "lab")]
    promoted = policy.select(
        None, torch.zeros(3, 1), _state([[1.0, nan], [3.0, nan], [2.0, 5.0]]), 2, None, 0
    )
    assert [(p.row, p.fidelity) for p in promoted] == [(1, "lab"), (0, "lab")]


def test_a_hull_funnel_promotes_the_deepest_below_the_cheap_hull_not_the_lowest_energy() -> None:
    fidelities = Fidelities.from_costs({"cheap": 0.01, "emt": 1.0}, "emt")
    hull = HullTarget.from_feature_names(["Au", "Cu"], ["x_Au", "x_Cu"])
    X = torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.5, 0.5], [0.1, 0.9]], dtype=torch.double)
    # formation energies -0.10, -0.09, -0.08, -0.04 eV/atom; the last is on the hull, the third not
    nan = float("nan")
    state = _state([[0.10, nan], [0.09, nan], [0.08, nan], [0.04, nan]])  # values signed: -E
    raw = FidelityPolicy("funnel", fidelities, -1.0).select(None, X, state, 4, None, 0)
    assert [p.row for p in raw] == [0, 1, 2, 3]
    by_hull = FidelityPolicy("funnel", fidelities, -1.0, hull=hull).select(None, X, state, 4, None, 0)
    assert {p.row for p in by_hull[:3]} == {0, 1, 3} and by_hull[3].row == 2  # the hull's three tie at 0
    assert by_hull[-1].value == pytest.approx(-0.02)  # 20 meV/atom above the hull


def _hull_case(cheap_cost: float) -> tuple[list[tuple[int, str]], PairState]:
    """``mf_hull`` on 40 Au-Cu candidates (inputs x_Au, x_Cu, z): rows 0-19 measured cheaply
    (the truth + 10 meV/atom), rows 20-29 at the target, rows 30-39 not at all."""
    g = torch.Generator().manual_seed(0)
    x, z = torch.rand(40, generator=g, dtype=torch.double), torch.rand(40, generator=g, dtype=torch.double)
    X = torch.stack([x, 1 - x, z], dim=-1)
    energy = -0.8 * x * (1 - x) + 0.05 * torch.sin(6 * z)
    fidelities = Fidelities.from_costs({"cheap": cheap_cost, "target": 1.0}, "target")
    hull = HullTarget.from_feature_names(["Au", "Cu"], ["x_Au", "x_Cu", "z"], 1.0)
    policy = FidelityPolicy("mf_hull", fidelities, -1.0, hull=hull)
    values = torch.full((40, 2), float("nan"), dtype=torch.double)
    values[:20, 0], values[20:30, 1] = -(energy[:20] + 0.01), -energy[20:30]
    state = PairState(torch.isnan(values), torch.zeros(40, 2, dtype=torch.bool), values)
    rows, levels = torch.nonzero(~torch.isnan(values), as_tuple=True)
    inputs = torch.cat(
        [policy.augment(X[r : r + 1], fidelities.names[j]) for r, j in zip(rows, levels, strict=True)]
    )
    data = SupervisedDataset(
        inputs,
        -values[rows, levels].unsqueeze(-1),
        feature_names=["x_Au", "x_Cu", "z", "f"],
        outcome_names=["e"],
    )
    model = MultiFidelityGP(torch.stack([X.min(0).values, X.max(0).values]), max_iterations=50).fit(data)
    picks = policy.select(model, X, state, 8, None, 0)
    return [(p.row, p.fidelity) for p in picks], state


def test_mf_hull_measures_cheaply_where_the_cheap_fidelity_is_informative_and_cheap() -> None:
    picks, _ = _hull_case(cheap_cost=0.01)
    assert len({row for row, _ in picks}) == 8
    assert not any(20 <= row < 30 for row, _ in picks)  # measured at the target already
    for row, fidelity in picks:
        # a new candidate is screened first; one screened already can only go to the target
        assert fidelity == ("cheap" if row >= 30 else "target")
    assert any(row >= 30 for row, _ in picks)
    dear, _ = _hull_case(cheap_cost=0.9)  # nearly the target's cost: not worth it everywhere
    assert any(row >= 30 and fidelity == "target" for row, fidelity in dear)


def test_mf_hull_needs_a_hull_target_and_a_minimised_objective() -> None:
    fidelities = Fidelities.from_costs({"cheap": 0.01, "emt": 1.0}, "emt")
    hull = HullTarget.from_feature_names(["Au", "Cu"], ["x_Au", "x_Cu"])
    with pytest.raises(ValueError, match="compositions"):
        FidelityPolicy("mf_hull", fidelities, -1.0)
    with pytest.raises(ValueError, match="minimised"):
        FidelityPolicy("mf_hull", fidelities, 1.0, hull=hull)


def test_mf_hull_in_a_campaign_needs_formation_energy_on_a_structure_pool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("acquisition.type = 'mf_hull' needs one objective")):
        parse_config(_config(tmp_path, kind="mf_hull"), base_dir=tmp_path)


STRUCTURE_CAMPAIGN = """
[campaign]
name = "mf"
seed = 1
ledger = "ledger.db"

[space.generator]
type = "structures"
elements = ["Cu", "Au"]
lattice = "fcc"
max_atoms = 3

[[objectives]]
name = "formation_energy_per_atom"
direction = "minimize"

[acquisition]
type = "mf_hull"
batch_size = 3
initial_designs = 4

[[oracles]]
fidelity = "single_point"
cost = 0.01
type = "dft"
calculator = "emt"
mode = "single_point"
workdir = "runs"

[[oracles]]
fidelity = "relaxed"
cost = 1.0
type = "dft"
calculator = "emt"
mode = "relax"
workdir = "runs"

[stopping]
max_cost = 4
"""


def test_an_mf_hull_campaign_screens_structures_with_single_points_and_relaxes_some(tmp_path: Path) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(STRUCTURE_CAMPAIGN)
    campaign = Campaign.from_file(path)
    try:
        assert isinstance(campaign, MultiFidelityCampaign)
        assert campaign.policy.hull is not None and campaign.policy.hull.elements == ("Au", "Cu")
        report = campaign.run()
    finally:
        campaign.close()
    evaluations = _evaluations(path)
    by_fidelity = Counter(e.fidelity for e in evaluations)
    assert by_fidelity["single_point"] > 0 and by_fidelity["relaxed"] > 0
    assert report.cost == pytest.approx(0.01 * by_fidelity["single_point"] + by_fidelity["relaxed"])
    assert report.cost <= 4
    assert all(e.status == "done" and "formation_energy_per_atom" in e.values for e in evaluations)


# --- campaigns -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mf_ucb", "mf_mes", "funnel"])
def test_a_two_fidelity_campaign_records_rows_and_cost_per_fidelity(tmp_path: Path, kind: str) -> None:
    path = write_fidelity_campaign(tmp_path, kind=kind, max_cost=12 if kind == "funnel" else 5)
    campaign = Campaign.from_file(path)
    try:
        assert isinstance(campaign, MultiFidelityCampaign)
        report = campaign.run()
    finally:
        campaign.close()
    evaluations = _evaluations(path)
    by_fidelity = Counter(e.fidelity for e in evaluations)
    costs = {"screen": 0.25, "lab": 1.0}
    assert all(e.status == "done" and e.cost == costs[e.fidelity] for e in evaluations)
    assert report.cost == pytest.approx(sum(costs[e.fidelity] for e in evaluations))
    assert report.cost <= (12 if kind == "funnel" else 5)
    assert len({(e.candidate_id, e.fidelity) for e in evaluations}) == len(evaluations)
    assert by_fidelity["screen"] > 0 and by_fidelity["lab"] > 0
    if kind == "funnel":
        assert by_fidelity["screen"] == 30  # every candidate screened before any promotion
    with Ledger(tmp_path / "ledger.db") as ledger:
        status = campaign_status(ledger)
        table = evaluations_table(ledger)
    assert status["target_fidelity"] == "lab"
    assert {name: row["experiments"] for name, row in status["fidelities"].items()} == dict(by_fidelity)
    assert status["fidelities"]["screen"]["cost"] == pytest.approx(0.25 * by_fidelity["screen"])
    lab_values = [e.values["y"] for e in evaluations if e.fidelity == "lab"]
    assert status["best"]["values"]["y"] == min(lab_values)  # only the target's results count
    assert list(table["fidelity"]) == [e.fidelity for e in evaluations]


def test_the_reference_lab_over_http_is_the_expensive_fidelity(
    tmp_path: Path, reference_lab: LabServer
) -> None:
    path = write_fidelity_campaign(tmp_path, kind="mf_ucb", lab=robot_entry(reference_lab.url), max_cost=5)
    campaign = Campaign.from_file(path)
    try:
        campaign.run()
    finally:
        campaign.close()
    runs = reference_lab.lab.store.runs("mf")
    evaluations = _evaluations(path)
    at_lab = [e for e in evaluations if e.fidelity == "lab"]
    assert at_lab and all(e.status == "done" and e.cost == 1.0 for e in at_lab)
    assert sorted(r.candidate_id for r in runs) == sorted(e.candidate_id for e in at_lab)
    assert any(e.fidelity == "screen" for e in evaluations)


@pytest.mark.slow
def test_killed_with_evaluations_pending_at_two_fidelities_resumes_losing_and_repeating_nothing(
    tmp_path: Path,
) -> None:
    screen, lab = tmp_path / "screen.jsonl", tmp_path / "lab.jsonl"
    path = write_fidelity_campaign(
        tmp_path,
        batch_size=2,
        max_cost=5,
        screen_extra=f'latency_s = 0.4\njournal = "{screen}"',
        lab=f'{EMULATED_LAB}\nlatency_s = 1.0\njournal = "{lab}"',
    )
    command = [sys.executable, "-m", "loop.cli", "run", str(path), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def pending_at_both() -> bool:  # the first design: two candidates at each fidelity, at once
        events = {j: read_journal(j) if j.exists() else [] for j in (screen, lab)}
        return (
            sum(e["event"] == "finished" for e in events[screen]) >= 1
            and events[screen][-1]["event"] == "started"
            and bool(events[lab])
            and events[lab][-1]["event"] == "started"
        )

    try:
        wait_for(pending_at_both, 120)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    in_flight = {name: read_journal(j)[-1]["candidate"] for name, j in (("screen", screen), ("lab", lab))}
    before = {(e.candidate_id, e.fidelity): e for e in _evaluations(path)}
    assert {before[(c, f)].status for f, c in in_flight.items()} == {"submitted"}

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    after = {(e.candidate_id, e.fidelity): e for e in _evaluations(path)}
    assert len(after) == len(_evaluations(path)), "one evaluation per (candidate, fidelity)"
    for key, old in before.items():  # nothing lost: every result kept as it was
        assert key in after
        if old.status == "done":
            assert after[key].values == old.values
    for fidelity, candidate in in_flight.items():
        settled = after[(candidate, fidelity)]
        assert settled.status == "failed" and "interrupted" in (settled.error or "")
    for fidelity, journal in (("screen", screen), ("lab", lab)):
        started = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
        assert max(started.values()) == 1, f"a candidate was sent to {fidelity} twice"
        assert set(started) == {c for c, f in after if f == fidelity}
    assert all(e.status in ("done", "failed") for e in after.values())
    with Ledger(tmp_path / "ledger.db") as ledger:
        _, cost = ledger.spent(ledger.campaign("mf")["id"])
    assert cost == pytest.approx(sum(0.25 if f == "screen" else 1.0 for _, f in after)) and cost <= 5
