"""Tests for loop.bench.otf and the ``bench otf`` command (a 7-atom Cu cell, 60 steps, tiny committee)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from typer.testing import CliRunner

from loop.bench.cli import app
from loop.bench.otf import (
    CHECK_EVERY,
    VARIANTS,
    Trajectory,
    every_kth_interval,
    radial_distribution,
    rdf_difference,
    run_otf_seeds,
    summarize_seeds,
)
from loop.errors import ConfigError
from loop.otf import WalkerSpec

STEPS = 60

TINY = f"""
[run]
name = "tiny"

[structure]
element = "Cu"
a = 3.61
repeat = [2, 1, 1]
vacancies = 1

[[walkers]]
name = "heat"
steps = {STEPS}
temperature_k = [300, 600]
seed = 3

[committee]
size = 2
workers = 1
channels = 8
epochs = 10
warm_epochs = 1
min_steps = 4

[otf]
initial_frames = 4
audit_every = 10
max_oracle_calls = 10

[oracle]
calculator = "emt"
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(TINY))
    return path


def test_bench_otf_runs_every_variant(tiny_config: Path, tmp_path: Path) -> None:
    args = ["otf", "--config", str(tiny_config), "--workdir", str(tmp_path / "bench"), "--json", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    variants = report["variants"]
    assert list(variants) == list(VARIANTS)
    keys = ("oracle_calls", "oracle_step_fraction", "force_rmse_ev_per_a", "energy_mae_ev_per_atom")
    keys += ("miss_rate", "rdf_difference", "wall_s", "md_steps", "threshold", "stopped_calling_at_step")
    keys += ("in_run_force_rmse_ev_per_a", "in_run_energy_mae_ev_per_atom")
    for name, numbers in variants.items():
        assert set(keys) <= set(numbers), name
        assert numbers["md_steps"] >= STEPS
    truth = variants["ground_truth"]
    assert truth["oracle_calls"] == truth["md_steps"] and truth["oracle_step_fraction"] == 1.0
    assert truth["force_rmse_ev_per_a"] == 0 and truth["miss_rate"] == 0 and truth["rdf_difference"] == 0
    assert truth["held_out_frames"] == STEPS // 20
    calibrated, kth = variants["calibrated"], variants["every_kth"]
    assert abs(kth["oracle_calls"] - calibrated["oracle_calls"]) <= 1
    assert kth["label_every"] >= 1 and kth["threshold"] is None
    coverage = calibrated["force_coverage"]
    assert coverage["count"] == len(calibrated["force_ratios"]) > 0
    assert set(coverage["recalibrated"]) == {"scale", "conformal"}
    initial = report["protocol"]["initial_threshold_ev_per_a"]
    assert variants["fixed_threshold"]["threshold"] == pytest.approx(initial)
    for name in ("calibrated", "fixed_threshold", "every_kth"):
        numbers = variants[name]
        assert numbers["miss_checks"] == numbers["md_steps"] // CHECK_EVERY, name  # no rollbacks here
        rows = (tmp_path / "bench" / name / "checks.csv").read_text().splitlines()[1:]
        assert [int(row.split(",")[1]) for row in rows] == list(range(CHECK_EVERY, STEPS + 1, CHECK_EVERY))
        assert 0 <= numbers["miss_rate"] <= 1 and numbers["misses"] <= numbers["miss_checks"]
        assert numbers["force_rmse_ev_per_a"] > 0 and numbers["energy_mae_ev_per_atom"] > 0
        assert numbers["in_run_force_rmse_ev_per_a"] > 0 and numbers["in_run_energy_mae_ev_per_atom"] > 0
        called = [row for row in rows if row.endswith(",1")]
        assert len(called) <= numbers["oracle_calls"], (
            "a check is marked called only if its step was labelled"
        )
        assert numbers["oracle_step_fraction"] == pytest.approx(numbers["oracle_calls"] / numbers["md_steps"])
    assert set(report["acceptance"]) >= {"oracle_step_fraction_at_most_2pct", "beats_baselines"}
    assert report["rdf_noise_floor"] > 0
    assert report["command"].startswith("alloop bench otf --config")
    assert (tmp_path / "bench" / "calibrated" / "otf.db").is_file()
    rounds = (tmp_path / "bench" / "calibrated" / "rounds.csv").read_text().splitlines()
    assert rounds[0].startswith("round,md_steps,oracle_calls,threshold") and len(rounds) > 1


def _run(offset: int, rmse: dict[str, float], in_run: dict[str, float], calls: int = 20) -> dict:
    return {
        "protocol": {"seed_offset": offset},
        "variants": {
            name: {
                "oracle_calls": calls,
                "oracle_step_fraction": calls / 2000,
                "force_rmse_ev_per_a": rmse[name],
                "in_run_force_rmse_ev_per_a": in_run[name],
                "energy_mae_ev_per_atom": 0.001,
                "miss_rate": 0.0,
                "rdf_difference": 0.02,
                "wall_s": 100.0,
            }
            for name in rmse
        },
    }


def test_summarize_seeds_counts_wins_and_judges_on_the_means() -> None:
    runs = [
        _run(0, {"calibrated": 0.020, "every_kth": 0.022}, {"calibrated": 0.03, "every_kth": 0.05}),
        _run(1, {"calibrated": 0.021, "every_kth": 0.019}, {"calibrated": 0.03, "every_kth": 0.04}),
        _run(2, {"calibrated": 0.020, "every_kth": 0.019}, {"calibrated": 0.04, "every_kth": 0.03}),
    ]
    summary = summarize_seeds(runs)
    assert summary["runs"] == 3 and summary["seed_offsets"] == [0, 1, 2]
    rmse = summary["variants"]["calibrated"]["force_rmse_ev_per_a"]
    assert rmse["mean"] == pytest.approx(0.061 / 3) and rmse["values"] == [0.020, 0.021, 0.020]
    versus = summary["calibrated_against"]["every_kth"]
    assert versus["wins"] == 1 and versus["in_run_wins"] == 2 and versus["never_more_calls"]
    assert versus["mean_rmse_difference_ev_per_a"] == pytest.approx(0.001 / 3)
    assert versus["in_run_mean_rmse_difference_ev_per_a"] == pytest.approx(-0.02 / 3)
    acceptance = summary["acceptance"]
    assert acceptance["beats_every_kth"] is False and acceptance["beats_every_kth_in_run"] is True
    assert acceptance["beats_fixed_threshold"] is None, "fixed_threshold did not run"
    assert acceptance["oracle_step_fraction_at_most_2pct"] and acceptance["miss_rate_at_most_2pct"]
    more_calls = [
        runs[0],
        _run(3, {"calibrated": 0.01, "every_kth": 0.02}, {"calibrated": 0.01, "every_kth": 0.02}, calls=30),
    ]
    more_calls[1]["variants"]["every_kth"]["oracle_calls"] = 25
    assert summarize_seeds(more_calls)["acceptance"]["beats_every_kth"] is False, (
        "more calls than the baseline"
    )
    with pytest.raises(ValueError, match="no runs"):
        summarize_seeds([])


def test_summarize_seeds_pools_force_coverage_recalibrated_within_each_run() -> None:
    runs = [_run(k, {"calibrated": 0.02}, {"calibrated": 0.03}) for k in range(2)]
    for run, ratios in zip(runs, ([4.0, 4.0, 4.0], [0.5, 0.5, 0.5]), strict=True):
        run["variants"]["calibrated"] |= {"force_ratios": ratios, "force_coverage": {"min_count": 2}}
    coverage = summarize_seeds(runs)["variants"]["calibrated"]["force_coverage"]
    assert coverage["count"] == 6 and coverage["coverage"]["0.9"] == pytest.approx(3 / 6)
    # Run 0's third call is scaled by its own RMS (4), not by one pooled with run 1's ratios.
    assert coverage["recalibrated"]["scale"]["coverage"]["0.9"] == pytest.approx(4 / 6)


def test_run_otf_seeds_refuses_repeated_or_no_offsets(tiny_config: Path) -> None:
    for offsets in ([], [1, 1]):
        with pytest.raises(ConfigError, match="seed offsets must be distinct"):
            run_otf_seeds(tiny_config, offsets)


def test_bench_otf_refuses_an_existing_variant_folder(tiny_config: Path, tmp_path: Path) -> None:
    (tmp_path / "bench" / "calibrated").mkdir(parents=True)
    args = ["otf", "--config", str(tiny_config), "--workdir", str(tmp_path / "bench"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "exists" in result.output


def test_every_kth_interval_matches_calls_from_above() -> None:
    walkers = [WalkerSpec("a", 2000), WalkerSpec("b", 1000)]
    for calls in (1, 7, 30, 500, 3000):
        k = every_kth_interval(walkers, calls)
        made = sum(w.steps // k for w in walkers)
        assert made >= calls and (k == 1 or sum(w.steps // (k + 1) for w in walkers) < calls)
    assert every_kth_interval(walkers, 0) == 2001  # no call at all


def test_radial_distribution_of_fcc_has_its_shells() -> None:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms: pairs beyond half the cell still count
    r, g = radial_distribution([atoms])
    first = r[np.argmax(g)]
    assert first == pytest.approx(3.61 / np.sqrt(2), abs=0.05)
    edges = np.append(r - 0.025, r[-1] + 0.025)
    counts = g * 4 * (4 / atoms.get_volume()) * 4 / 3 * np.pi * np.diff(edges**3)
    assert counts[r < 3.0].sum() == pytest.approx(12 * 4)  # 12 nearest neighbours of each of 4 atoms
    assert rdf_difference(g, g) == 0.0
    assert rdf_difference(2 * g, g) == pytest.approx(1.0)


def test_a_trajectory_lists_its_records_walker_by_walker_however_the_threads_interleaved() -> None:
    def walker(name: str) -> SimpleNamespace:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.calc = EMT()
        return SimpleNamespace(atoms=atoms, spec=SimpleNamespace(name=name, steps=40), step=0)

    held_out = []
    for order in ("abab", "bbaa"):
        trajectory, walkers = Trajectory(EMT, hold_out=True), {"a": walker("a"), "b": walker("b")}
        for name in order:
            w = walkers[name]
            w.step += 20
            w.atoms.positions[0, 0] += 0.01
            trajectory.observe(w)  # type: ignore[arg-type]
        held_out.append([frame.id for frame in trajectory.held_out])
        assert len(trajectory.rdf_frames) == 2, "steps past half the run: one of each walker's two"
    assert held_out[0] == held_out[1] == ["a:20", "a:40", "b:20", "b:40"]
