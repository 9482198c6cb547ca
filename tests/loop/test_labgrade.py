"""Lab-grade campaigns end to end: a Pareto search, outcome constraints, learned feasibility,
transfer from a second ledger, and the bad inputs of their sections."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loop.bench.labs import FailureRegionLab, in_failure_region
from loop.build import build_oracle, build_space
from loop.campaign import Campaign
from loop.config import parse_config
from loop.errors import ConfigError
from loop.report import campaign_status, evaluations_table

SPACE = """
[campaign]
name = "{name}"
seed = {seed}
ledger = "{ledger}"

[[space.parameters]]
name = "x1"
type = "continuous"
lower = 0.0
upper = 1.0

[[space.parameters]]
name = "x2"
type = "continuous"
lower = 0.0
upper = 1.0

[acquisition]
{acquisition}
batch_size = {batch_size}
initial_designs = 4
num_restarts = 2
raw_samples = 64
mc_samples = 32
max_iterations = 30
{acquisition_extra}

[stopping]
max_experiments = {budget}
"""


def config_text(tmp_path: Path, objectives: str, extra: str = "", **fields: object) -> str:
    values = {
        "name": "lab",
        "seed": 0,
        "ledger": str(tmp_path / "lab.db"),
        "acquisition": "",
        "batch_size": 1,
        "budget": 10,
        "acquisition_extra": "",
    } | fields
    if values["acquisition"]:
        values["acquisition"] = f'type = "{values["acquisition"]}"'
    return SPACE.format(**values) + textwrap.dedent(objectives) + textwrap.dedent(extra)


def write(tmp_path: Path, text: str, name: str = "lab.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


PARETO = """
[[objectives]]
name = "f1"
[[objectives]]
name = "f2"

[oracle]
type = "emulator"
function = "loop.bench.labs:two_objectives"
properties = { width = "" }
"""

RIDGE = """
[[objectives]]
name = "y"

[oracle]
type = "emulator"
function = "loop.bench.labs:ridge"
noise_sd = 0.01
"""


@pytest.mark.parametrize("trust_region", ["", "trust_region = 0.8"])
def test_a_pareto_campaign_reports_its_front_and_hypervolume(tmp_path: Path, trust_region: str) -> None:
    text = config_text(tmp_path, PARETO, batch_size=2, budget=10, acquisition_extra=trust_region)
    campaign = Campaign.from_file(write(tmp_path, text))
    assert campaign.config.acquisition.type == "qlognehvi"  # the default of a Pareto search
    assert campaign.acquisition.trust_region == (0.8 if trust_region else None)  # type: ignore[attr-defined]
    try:
        campaign.run()
    finally:
        campaign.close()
    with campaign.ledger.__class__(campaign.ledger.url) as ledger:
        status = campaign_status(ledger)
    pareto = status["pareto"]
    assert pareto["front"] and pareto["reference_point_inferred"]
    volumes = [h["hypervolume"] for h in pareto["hypervolume_by_cycle"]]
    assert volumes == sorted(volumes) and volumes[-1] > 0  # never shrinks as results arrive
    cycles = {e["cycle"] for e in pareto["hypervolume_by_cycle"]}
    assert len(cycles) >= 3
    png = tmp_path / "front.png"
    shown = subprocess.run(
        [sys.executable, "-m", "loop.cli", "status", str(tmp_path / "lab.db"), "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert shown.returncode == 0, shown.stderr
    assert "Pareto front: hypervolume" in shown.stdout and png.stat().st_size > 1000


def test_outcome_constraints_are_modelled_applied_and_reported(tmp_path: Path) -> None:
    constraint = """
    [[constraints.outcomes]]
    name = "width"
    op = "<="
    value = 0.5
    """
    path = write(tmp_path, config_text(tmp_path, PARETO, constraint, acquisition="qparego", budget=12))
    campaign = Campaign.from_file(path)
    assert campaign.outcomes == ["f1", "f2", "width"]  # the constraint's outcome is modelled too
    try:
        campaign.run()
        table = evaluations_table(campaign.ledger)
        status = campaign_status(campaign.ledger)
    finally:
        campaign.close()
    done = table[table.status == "done"]
    assert (done["width_ok"] == (done["width"] <= 0.5)).all()
    after_random = done[done.cycle > 1]
    assert after_random["width_p_ok"].notna().all()  # predicted when proposed
    assert after_random["width_ok"].mean() >= 0.6  # the acquisition keeps to the limit
    front = {p["candidate_id"] for p in status["pareto"]["front"]}
    assert front and (done[done.candidate_id.isin(front)]["width"] <= 0.5).all()  # a feasible front


def run_ridge(tmp_path: Path, learn: bool, seed: int) -> int:
    extra = "[feasibility]\nlearn = true\nfloor = 0.05\n" if learn else ""
    text = config_text(tmp_path, RIDGE, extra, name=f"ridge{learn}{seed}", seed=seed, budget=20)
    config = parse_config(__import__("tomllib").loads(text))
    space, _ = build_space(config)
    oracle = FailureRegionLab(build_oracle(config, space), in_failure_region)
    campaign = Campaign.open(config, oracle=oracle)
    try:
        campaign.run()
        return campaign_status(campaign.ledger, campaign.name)["wasted_evaluations"]
    finally:
        campaign.close()


@pytest.mark.slow
def test_learned_feasibility_wastes_fewer_evaluations(tmp_path: Path) -> None:
    seeds = (0, 1)
    without = sum(run_ridge(tmp_path, False, s) for s in seeds)
    learned = sum(run_ridge(tmp_path, True, s) for s in seeds)
    assert learned < without


def test_transfer_from_a_second_ledger(tmp_path: Path) -> None:
    source_ledger = tmp_path / "past.db"
    past = write(
        tmp_path, config_text(tmp_path, RIDGE, name="past", ledger=source_ledger, budget=12), "past.toml"
    )
    campaign = Campaign.from_file(past)
    try:
        campaign.run()
    finally:
        campaign.close()
    extra = f'[transfer]\ncampaigns = ["past"]\nledger = "{source_ledger}"\n'
    path = write(tmp_path, config_text(tmp_path, RIDGE, extra, name="new", budget=6))
    campaign = Campaign.from_file(path)
    try:
        assert len(campaign.surrogate.sources) == 1 and campaign.surrogate.sources[0][0] == "past"
        campaign.run()
        cycles = campaign.ledger.cycles(campaign.id)
    finally:
        campaign.close()
    summary = cycles[-1].surrogate
    assert summary["type"] == "TransferGP"
    assert summary["n_train"] > 6  # the target's results and the source's


def test_a_log_scale_objective_is_modelled_as_a_logarithm_and_non_positive_results_fail(
    tmp_path: Path,
) -> None:
    # The ridge is exp(-d^2 / 0.08) plus noise of sd 0.01: far from its peak a result can be <= 0.
    logged = RIDGE.replace('name = "y"', 'name = "y"\nlog_scale = true')
    campaign = Campaign.from_file(write(tmp_path, config_text(tmp_path, logged, budget=12, seed=3)))
    try:
        assert campaign.surrogate.log_outcomes == [0]  # type: ignore[attr-defined]
        campaign.run()
        table = evaluations_table(campaign.ledger, campaign.name)
        cycles = campaign.ledger.cycles(campaign.id)
    finally:
        campaign.close()
    done, failed = table[table.status == "done"], table[table.status == "failed"]
    assert len(done) + len(failed) == 12 and (done["y"] > 0).all()
    assert len(failed) > 0 and all(
        "is not > 0, and it is modelled on a log scale" in e for e in failed["error"]
    )
    assert cycles[-1].surrogate["log_outcomes"] == [0]


BAD = {
    "unknown objective in a constraint": (
        PARETO,
        '[[constraints.outcomes]]\nname = "thickness"\nop = "<="\nvalue = 1.0\n',
        "",
        "constraints.outcomes: unknown outcome 'thickness'",
    ),
    "a transfer campaign that does not exist": (
        RIDGE,
        '[transfer]\ncampaigns = ["nowhere"]\n',
        "",
        "transfer.campaigns: no campaign 'nowhere'",
    ),
    "a reference point of the wrong length": (
        PARETO,
        "",
        "reference_point = [0.0, 0.0, 0.0]",
        "acquisition.reference_point: 3 values for 2 objectives",
    ),
    "a log scale where the transfer GP models values as they are": (
        RIDGE.replace('name = "y"', 'name = "y"\nlog_scale = true'),
        '[transfer]\ncampaigns = ["other"]\n',
        "",
        "objectives.log_scale (y): not offered here: the multi-task GP of [transfer]",
    ),
    "a trust region for one scalarised objective": (
        RIDGE,
        "",
        "trust_region = 0.8",
        "acquisition.trust_region: applies to a Pareto search",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_give_one_line_naming_the_key_and_write_nothing(tmp_path: Path, case: str) -> None:
    objectives, extra, acquisition_extra, message = BAD[case]
    ledger = tmp_path / "lab.db"
    if "transfer" in case:  # the ledger exists, with another campaign in it
        run = Campaign.from_file(
            write(tmp_path, config_text(tmp_path, RIDGE, name="other", budget=4), "o.toml")
        )
        run.run()
        run.close()
    before = _rows(ledger)
    text = config_text(tmp_path, objectives, extra, acquisition_extra=acquisition_extra)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Campaign.from_file(path)
    result = subprocess.run(
        [sys.executable, "-m", "loop.cli", "run", str(path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert _rows(ledger) == before


def _rows(ledger: Path) -> dict[str, int]:
    if not ledger.exists():
        return {}
    with sqlite3.connect(ledger) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
