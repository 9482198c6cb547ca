"""The campaign cycle end to end: resume, crash safety, failures, stopping rules, reproducibility."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ase import Atoms
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.campaign import Campaign
from loop.candidate import Candidate
from loop.config import load_config, parse_config
from loop.errors import ConfigError
from loop.ledger import Ledger
from loop.ledger_records import Proposal
from loop.stability import campaign_hull, hull_heights, hull_points, near_hull, phase_diagram
from loop.stopping import NearHull
from oracles.base import Measurement, Oracle, Result
from oracles.dft import DFTRunner
from oracles.dft_job import JobSettings, execute
from oracles.errors import OracleSetupError
from oracles.simulated import read_journal
from surrogates.base import Surrogate
from tests.helpers import kill_mid_experiment


def _ledger_of(config_path: Path) -> Ledger:
    return Ledger(load_config(config_path).ledger_location)


def _campaign_id(ledger: Ledger) -> int:
    return int(ledger.campaign()["id"])


def test_runs_to_budget_and_records_everything(branin_config: Callable[..., Path]) -> None:
    campaign = Campaign.from_file(branin_config(max_experiments=8))
    report = campaign.run()
    assert report.stop_reason == "budget spent: 8 of 8 experiments"
    evaluations = campaign.ledger.evaluations(campaign.id)
    assert len(evaluations) == 8
    assert {e.status for e in evaluations} == {"done"}
    assert all(math.isfinite(e.values["y"]) for e in evaluations)
    assert len({e.candidate_id for e in evaluations}) == 8
    cycles = campaign.ledger.cycles(campaign.id)
    assert [c.acquisition for c in cycles] == ["random", "qlognei", "qlognei"]
    assert cycles[1].surrogate is not None and cycles[1].surrogate["n_train"] == 4
    assert all(c["acquisition_value"] is not None for c in cycles[1].chosen or [])
    assert report.best is not None and report.best["values"]["y"] == min(e.values["y"] for e in evaluations)


def test_second_run_resumes_without_repeating(branin_config: Callable[..., Path]) -> None:
    path = branin_config(max_experiments=10)
    first = Campaign.from_file(path)
    first.run(max_cycles=2)
    before = {e.candidate_id: e.values for e in first.ledger.evaluations(first.id)}
    assert len(before) == 6
    first.close()

    second = Campaign.from_file(path)
    assert second.id == first.id and second.run_id != first.run_id
    report = second.run()
    after = second.ledger.evaluations(second.id)
    assert report.experiments == 10 and len(after) == 10
    assert len({e.candidate_id for e in after}) == 10
    assert {e.candidate_id: e.values for e in after if e.candidate_id in before} == before
    assert [c.cycle for c in second.ledger.cycles(second.id)] == [0, 1, 2, 3]


def test_same_seed_same_campaign(branin_config: Callable[..., Path]) -> None:
    runs = []
    for name in ("a", "b"):
        campaign = Campaign.from_file(branin_config(f"{name}.toml", ledger=f"{name}.db", max_experiments=8))
        campaign.run()
        runs.append([(e.candidate_id, e.values["y"]) for e in campaign.ledger.evaluations(campaign.id)])
    assert runs[0] == runs[1]


def test_failed_and_invalid_results_are_recorded_not_learned(branin_config: Callable[..., Path]) -> None:
    path = branin_config(
        max_experiments=14,
        oracle_extra="failure_probability = 0.25\ninvalid_probability = 0.25",
    )
    campaign = Campaign.from_file(path)
    report = campaign.run()
    evaluations = campaign.ledger.evaluations(campaign.id)
    assert report.experiments == 14
    failed = [e for e in evaluations if e.status == "failed"]
    invalid = [e for e in failed if "InvalidResult" in (e.error or "")]
    crashed = [e for e in failed if "simulated experiment failure" in (e.error or "")]
    assert invalid and crashed, "both fault kinds should occur at these probabilities"
    assert all(e.retryable is False for e in invalid) and all(e.retryable for e in crashed)
    assert all(not e.values for e in failed)
    dataset = campaign.dataset()
    assert dataset is not None and dataset.X.shape[0] == sum(e.status == "done" for e in evaluations)
    assert bool(dataset.Y.isfinite().all())


class _BrokenOracle(Oracle):
    """Raises a plain Python error on one candidate in three: a bug in user code."""

    implemented_properties = ("y",)

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, candidate: Candidate) -> Result:
        self.calls += 1
        if self.calls % 3 == 0:
            return {}["no such key"]  # type: ignore[return-value]
        return Result(candidate.id, {"y": Measurement(float(candidate.params["x1"]))})


def test_oracle_that_raises_is_recorded_with_traceback(branin_config: Callable[..., Path]) -> None:
    campaign = Campaign(load_config(branin_config(max_experiments=9)), oracle=_BrokenOracle())
    report = campaign.run()
    failed = campaign.ledger.evaluations(campaign.id, ["failed"])
    assert report.experiments == 9 and len(failed) == 3
    assert all("KeyError" in (e.error or "") and "no such key" in (e.error or "") for e in failed)
    assert all("_BrokenOracle" in (e.error or "") or "evaluate" in (e.error or "") for e in failed)


def test_setup_error_stops_the_campaign_after_recording(branin_config: Callable[..., Path]) -> None:
    class Unusable(Oracle):
        implemented_properties = ("y",)

        def evaluate(self, candidate: Candidate) -> Result:
            raise OracleSetupError("instrument is not connected")

    campaign = Campaign(load_config(branin_config()), oracle=Unusable())
    with pytest.raises(OracleSetupError, match="not connected"):
        campaign.run()
    failed = campaign.ledger.evaluations(campaign.id, ["failed"])
    assert len(failed) == 4 and all("setup error" in (e.error or "") for e in failed)
    assert all(e.retryable is False for e in failed)


def test_oracle_lacking_an_objective_is_refused_before_any_write(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    class Other(Oracle):
        implemented_properties = ("z",)

        def evaluate(self, candidate: Candidate) -> Result:
            raise AssertionError("never called")

    with pytest.raises(OracleSetupError, match=r"does not measure objective\(s\) \['y'\]"):
        Campaign(load_config(branin_config()), oracle=Other())
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize(
    ("stopping_extra", "objective_extra", "expected"),
    [
        ("max_cost = 3.0", "", "budget spent: cost"),
        ("patience = 1", "", "no improvement for"),
        ("", "target = 20.0", "target reached by"),
        ("min_expected_improvement = 1e9", "", "expected improvement"),
    ],
)
def test_stopping_rules(
    branin_config: Callable[..., Path], stopping_extra: str, objective_extra: str, expected: str
) -> None:
    path = branin_config(max_experiments=30, batch_size=1, stopping_extra=stopping_extra)
    if objective_extra:
        path.write_text(
            path.read_text().replace('direction = "minimize"', f'direction = "minimize"\n{objective_extra}')
        )
    campaign = Campaign.from_file(path)
    report = campaign.run()
    assert report.stop_reason is not None and expected in report.stop_reason
    assert report.experiments < 30


def test_pool_campaign_stops_when_exhausted(tmp_path: Path) -> None:
    table = tmp_path / "pool.csv"
    rows = ["a,b,y"] + [f"{a},{b},{(a - 2) ** 2 + b}" for a in range(3) for b in range(2) for _ in range(2)]
    table.write_text("\n".join(rows) + "\n")
    config = tmp_path / "pool.toml"
    config.write_text(
        f"""
[campaign]
name = "tiny-pool"
ledger = "ledger.db"
[space.pool]
path = "{table.name}"
inputs = ["a", "b"]
[[objectives]]
name = "y"
direction = "minimize"
[acquisition]
type = "ucb"
initial_designs = 2
[oracle]
type = "dataset"
path = "{table.name}"
[stopping]
max_experiments = 100
"""
    )
    campaign = Campaign.from_file(config)
    report = campaign.run()
    assert report.stop_reason == "the candidate pool is exhausted"
    evaluations = campaign.ledger.evaluations(campaign.id)
    assert len(evaluations) == 6 and len({e.candidate_id for e in evaluations}) == 6
    assert report.best is not None and report.best["params"] == {"a": 2, "b": 0}


def test_invalid_config_writes_nothing(branin_config: Callable[..., Path], tmp_path: Path) -> None:
    path = branin_config(oracle_extra="noise_sd = -1.0")
    with pytest.raises(ConfigError, match="noise_sd"):
        Campaign.from_file(path)
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.slow
def test_sigkill_mid_cycle_then_resume_loses_nothing_and_repeats_nothing(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = branin_config(
        max_experiments=12,
        batch_size=3,
        initial_designs=3,
        oracle_extra=f'latency_s = 0.6\ncapacity = 1\njournal = "{journal}"',
    )
    command = [sys.executable, "-m", "loop.cli", "run", str(path), "--quiet"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    kill_mid_experiment(process, journal, finished=4, timeout_s=120)

    returned_before = {e["candidate"] for e in read_journal(journal) if e["event"] == "finished"}
    in_flight = read_journal(journal)[-1]["candidate"]
    with _ledger_of(path) as ledger:
        done_before = {e.candidate_id: e.values for e in ledger.evaluations(_campaign_id(ledger), ["done"])}
    assert set(done_before) == returned_before, "every result the lab returned is in the ledger"

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    started = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
    assert max(started.values()) == 1, "no candidate was sent to the lab twice"
    with _ledger_of(path) as ledger:
        evaluations = ledger.evaluations(_campaign_id(ledger))
    by_id = {e.candidate_id: e for e in evaluations}
    assert len(evaluations) == 12 == len(by_id)
    assert {cid: by_id[cid].values for cid in done_before} == done_before
    assert by_id[in_flight].status == "failed" and "interrupted" in (by_id[in_flight].error or "")
    assert set(started) == set(by_id), "the lab ran exactly the candidates the ledger knows"
    assert all(e.status in ("done", "failed") for e in evaluations)


# --- the near-hull goal ----------------------------------------------------------------------


class InProcessEMT(DFTRunner):
    """The DFT runner with EMT single points, each job in this process: no child start-up."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(JobSettings(mode="single_point"), workdir)

    def run(self, atoms: Atoms, name: str) -> tuple[dict[str, Any], Path]:
        folder = self._new_folder(name)
        outcome = execute(atoms, self.settings, folder)
        assert outcome["status"] == "ok", outcome
        return outcome, folder


def _structure_campaign(max_atoms: int, **stopping: object) -> dict[str, Any]:
    return {
        "campaign": {"name": "near-hull", "ledger": "ledger.db"},
        "space": {"generator": {"type": "structures", "elements": ["Cu", "Au"], "max_atoms": max_atoms}},
        "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}],
        "acquisition": {"type": "ucb", "beta": 4.0, "batch_size": 2, "initial_designs": 4},
        "oracle": {"type": "dft", "mode": "single_point"},
        "stopping": {"max_experiments": 1000, **stopping},
    }


def test_near_hull_goal_stops_once_every_near_hull_structure_is_found(tmp_path: Path) -> None:
    oracle = InProcessEMT(tmp_path / "runs")
    config = parse_config(_structure_campaign(max_atoms=6, near_hull_mev=10.0), tmp_path)
    campaign = Campaign(config, oracle=oracle)
    assert campaign.pool is not None and len(campaign.pool) == 135
    report = campaign.run()
    # Every structure within 10 meV/atom of the hull of all 135 (EMT) was found, with far
    # fewer experiments than the pool holds.
    truth = [
        (c.id, str(c.params["formula"]), oracle.evaluate(c).measurements["formation_energy_per_atom"].value)
        for c in campaign.pool.candidates
    ]
    wanted = near_hull(hull_points(truth), within_mev=10.0)
    done = {e.candidate_id for e in campaign.ledger.evaluations(campaign.id, ["done"])}
    assert wanted <= done and report.experiments < 60
    # The lower bounds were judged by the std recalibrated by default (the stopping rules only).
    scale = campaign.std_scales()["formation_energy_per_atom"]
    assert scale != 1.0
    assert report.stop_reason == (
        "near-hull goal met: no unevaluated candidate's lower bound within 10 meV/atom of the hull "
        f"({len(wanted)} structures within it found; predictive std x {scale:.3g})"
    )
    campaign.close()


def test_a_ledger_in_the_old_structure_form_is_not_evaluated_again(tmp_path: Path) -> None:
    # A ledger written before structures were encoded canonically holds another id for a pool
    # candidate (here: a fractional 1.0 and a -0.0 where today's form has 0.0).
    config = parse_config(_structure_campaign(max_atoms=4), tmp_path)
    campaign = Campaign(config, oracle=InProcessEMT(tmp_path / "runs"))
    assert campaign.pool is not None
    params = dict(campaign.pool.candidates[3].params)
    body = json.loads(str(params["structure"]))
    body["frac_coords"] = [[1.0 if x == 0.0 else x for x in row] for row in body["frac_coords"]]
    body["lattice"] = [[-0.0 if x == 0.0 else x for x in row] for row in body["lattice"]]
    old = Candidate({**params, "structure": json.dumps(body, separators=(",", ":"))})
    assert old.id not in campaign.pool.index
    campaign.ledger.propose(campaign.id, campaign.run_id, 0, [Proposal(old)], "random", None)
    assert 3 not in campaign.free_pool_rows()
    assert len(campaign.free_pool_rows()) == len(campaign.pool) - 1
    report = campaign.run()
    evaluated = [e.candidate_id for e in campaign.ledger.evaluations(campaign.id)]
    assert campaign.pool.ids[3] not in evaluated and len(evaluated) == len(set(evaluated))
    assert report.experiments == len(campaign.pool)
    campaign.close()


class PlannedSurrogate(Surrogate):
    """Predicts a planned mean and standard deviation (eV/atom) for each row of ``X``."""

    def __init__(self, X: Tensor, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.X, self.mean, self.std = X, mean, std

    def fit(self, dataset: SupervisedDataset) -> PlannedSurrogate:
        return self

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("only predict() is planned")

    def predict(self, X: Tensor, chunk_size: int = 0) -> tuple[Tensor, Tensor]:
        rows = torch.cdist(X, self.X).argmin(dim=1)
        return self.mean[rows, None], self.std[rows, None] ** 2


def test_near_hull_goal_waits_while_a_lower_bound_reaches_the_hull(tmp_path: Path) -> None:
    data = _structure_campaign(max_atoms=3, near_hull_mev=10.0)
    campaign = Campaign(parse_config(data, tmp_path), oracle=InProcessEMT(tmp_path / "runs"))
    campaign.run(max_cycles=1)  # four random structures, evaluated
    assert campaign.pool is not None
    done = campaign.ledger.evaluations(campaign.id, ["done"])
    taken = {e.candidate_id for e in done}
    free = [i for i, cid in enumerate(campaign.pool.ids) if cid not in taken]
    assert len(done) == 4 and len(free) == 4
    X = campaign.pool.X[free]
    assert len(torch.unique(X, dim=0)) == len(free)
    # Plan each free candidate's lower bound (mean - 2 std) 1 meV/atom beyond the goal's reach.
    diagram = phase_diagram([(str(e.params["formula"]), e.values["formation_energy_per_atom"]) for e in done])
    formulas = [str(campaign.pool.candidates[i].params["formula"]) for i in free]
    # The hull energy at each composition: minus the height of 0 eV/atom above it.
    hull = -torch.tensor(hull_heights(diagram, [(f, 0.0) for f in formulas]), dtype=torch.double)
    std = torch.full((len(free),), 0.02, dtype=torch.double)
    mean = hull + 0.010 + 2 * std + 0.001
    found = len(near_hull(campaign_hull(campaign.ledger, "near-hull"), within_mev=10.0))
    assert campaign.improvement_exhausted(PlannedSurrogate(X, mean, std)) == (
        "near-hull goal met: no unevaluated candidate's lower bound within 10 meV/atom of the hull "
        f"({found} structures within it found; predictive std x 1)"
    )
    # One candidate's bound 1 meV/atom inside the reach: it could still land near the hull.
    rule = NearHull(10.0, 2.0)
    assert rule.reaching(campaign, PlannedSurrogate(X, mean, std)) == []
    mean[2] -= 0.002
    assert campaign.improvement_exhausted(PlannedSurrogate(X, mean, std)) is None
    # What keeps it going: that candidate, with the mean and std the rule judged by.
    [(row, mu, sigma)] = rule.reaching(campaign, PlannedSurrogate(X, mean, std))
    assert row == free[2] and mu == pytest.approx(float(mean[2])) and sigma == pytest.approx(0.02)
    assert campaign.improvement_exhausted(None) is None
    campaign.close()
    # The bound one standard deviation below the mean: 20 meV/atom higher, out of reach again.
    data["stopping"]["near_hull_sigmas"] = 1.0
    resumed = Campaign(parse_config(data, tmp_path), oracle=InProcessEMT(tmp_path / "runs"))
    assert resumed.id == campaign.id
    assert (resumed.improvement_exhausted(PlannedSurrogate(X, mean, std)) or "").startswith(
        "near-hull goal met"
    )
    resumed.close()


@pytest.mark.parametrize(
    ("stopping", "error"),
    [
        ({"near_hull_mev": -5.0}, r"stopping.near_hull_mev: Input should be greater than 0"),
        ({"near_hull_mev": 0}, r"stopping.near_hull_mev: Input should be greater than 0"),
        ({"near_hull_mev": "a lot"}, r"stopping.near_hull_mev: Input should be a valid number"),
        ({"near_hull_mev": math.nan}, r"stopping.near_hull_mev: Input should be a finite number"),
        ({"near_hull_mev": 10, "near_hull_sigmas": 0}, r"stopping.near_hull_sigmas: Input should be greater"),
        ({"near_hull_sigmas": 3.0}, r"'near_hull_sigmas' applies only with 'near_hull_mev'"),
    ],
)
def test_near_hull_goal_bad_values_are_named(tmp_path: Path, stopping: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(_structure_campaign(max_atoms=2, **stopping), tmp_path)


def test_near_hull_goal_needs_formation_energies_of_a_structure_pool(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    wrong_objective = _structure_campaign(max_atoms=2, near_hull_mev=10.0)
    wrong_objective["objectives"] = [{"name": "energy_per_atom", "direction": "minimize"}]
    with pytest.raises(
        ConfigError, match=r"stopping.near_hull_mev: the near-hull goal needs the objective 'formation_ene"
    ):
        parse_config(wrong_objective, tmp_path)
    path = branin_config(stopping_extra="near_hull_mev = 10.0")
    path.write_text(path.read_text().replace('name = "y"', 'name = "formation_energy_per_atom"'))
    with pytest.raises(
        ConfigError, match=r"stopping.near_hull_mev: the near-hull goal needs a structure pool"
    ):
        load_config(path)
    # The goal may change on resume: it is no part of the campaign's identity.
    hashes = {
        parse_config(_structure_campaign(max_atoms=2, **stopping), tmp_path).hash
        for stopping in ({}, {"near_hull_mev": 10.0}, {"near_hull_mev": 25.0, "near_hull_sigmas": 3.0})
    }
    assert len(hashes) == 1


def test_cycle_reports_show_the_best_in_its_own_sign(branin_config: Callable[..., Path]) -> None:
    campaign = Campaign.from_file(branin_config(max_experiments=6))
    seen: list[float | None] = []
    campaign.run(on_cycle=lambda report: seen.append(report.best))
    done = campaign.ledger.evaluations(campaign.id, ["done"])
    assert seen[-1] == min(e.values["y"] for e in done) > 0  # minimised, reported as measured


def test_retryable_failures_are_retried_in_the_engine_free_loop(
    branin_config: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = branin_config(
        max_experiments=6,
        oracle_extra=f'failure_probability = 0.5\njournal = "{journal}"\nretries = 2\nretry_delay_s = 0.01',
    )
    with caplog.at_level("WARNING", logger="alloop"):
        Campaign.from_file(path).run()

    events = read_journal(journal)
    attempts = Counter(e["candidate"] for e in events if e["event"] == "started")
    failed_attempts = Counter(e["candidate"] for e in events if e["event"] == "failed")
    with Ledger(tmp_path / "ledger.db") as ledger:
        evaluations = {e.candidate_id: e for e in ledger.evaluations(ledger.campaign()["id"])}
    assert set(attempts) == set(evaluations) and len(evaluations) == 6, "one evaluation per candidate"
    assert max(attempts.values()) > 1, "the seed gives failures to retry"
    for candidate, evaluation in evaluations.items():
        if evaluation.status == "done":
            assert failed_attempts[candidate] == attempts[candidate] - 1
        else:  # the final failure, recorded once
            assert attempts[candidate] == 3 and "attempt 3" in (evaluation.error or "")
    retried = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert retried and all(r.levelname == "WARNING" and "(attempt " in r.getMessage() for r in retried)
    assert "of 3)" in retried[0].getMessage()


def test_retries_change_on_resume_without_changing_the_campaign(branin_config: Callable[..., Path]) -> None:
    plain = load_config(branin_config(max_experiments=4))
    retried = load_config(branin_config(max_experiments=4, oracle_extra="retries = 3"))
    assert retried.oracle.retries == 3 and retried.hash == plain.hash
