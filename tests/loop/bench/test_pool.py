"""Tests for loop.bench.pool and the ``bench pool`` command (a 40-row slice of crossed barrel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from loop.bench.cli import app
from loop.bench.pool import PoolProblem

DATA = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "crossed_barrel" / "crossed_barrel.csv"
)


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    if not DATA.is_file():
        pytest.skip(f"shared benchmark data not found at {DATA} (the shared/ folder beside the repository)")
    path = tmp_path / "cb40.csv"
    pd.read_csv(DATA).head(40).to_csv(path, index=False)
    return path


def test_problem_groups_replicates_and_marks_the_best(small_csv: Path) -> None:
    problem = PoolProblem.from_csv(small_csv, "toughness", maximize=True, good_fraction=0.1)
    table = pd.read_csv(small_csv)
    means = table.groupby(["n", "theta", "r", "t"], sort=False)["toughness"].mean().to_numpy()
    assert problem.pool_size == len(means) and problem.good_count == int(np.ceil(0.1 * len(means)))
    assert np.allclose(problem.values, means)
    assert problem.values[problem.good_mask].min() >= problem.values[~problem.good_mask].max()
    low = PoolProblem.from_csv(small_csv, "toughness", maximize=False, good_fraction=0.1)
    assert low.values[low.good_mask].max() <= low.values[~low.good_mask].min()


def test_bad_problem_is_refused(small_csv: Path) -> None:
    with pytest.raises(ValueError, match="good fraction"):
        PoolProblem.from_csv(small_csv, "toughness", True, 0.0)
    with pytest.raises(ValueError, match="not in table"):
        PoolProblem.from_csv(small_csv, "strength", True, 0.1)


def test_pool_command_runs_our_loop_and_random(small_csv: Path, tmp_path: Path) -> None:
    plot = tmp_path / "top.png"
    args = ["pool", "--data", str(small_csv), "--objective", "toughness", "--maximize"]
    args += ["--good-fraction", "0.1", "--campaigns", "2", "--max-experiments", "12"]
    args += ["--json", "--quiet", "--plot", str(plot)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("cycles_to_top80", "ef_peak", "af_max", "seconds_per_decision", "random_measured"):
        assert key in summary
    assert summary["pool_size"] == 40 and summary["good_count"] == 4 and summary["n_campaigns"] == 2
    assert summary["seconds_per_decision"] > 0
    assert summary["random_measured"]["n_campaigns"] == 2
    assert plot.stat().st_size > 1000


def test_pool_command_refuses_an_unknown_objective(small_csv: Path) -> None:
    args = ["pool", "--data", str(small_csv), "--objective", "nope", "--campaigns", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "nope" in result.output
