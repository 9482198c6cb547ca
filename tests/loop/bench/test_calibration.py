"""Tests for loop.bench.calibration on a small synthetic pool: the stopping-only recalibration
picks what no recalibration picks, seed by seed, while its stopping intervals are rescaled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loop.bench.calibration import VARIANTS, PoolSpec, run_calibration_benchmark


@pytest.fixture
def rough_pool(tmp_path: Path) -> PoolSpec:
    """A 64-design grid whose objective is a smooth trend plus rough noise (a GP on it is
    over-confident, so the recalibration factor leaves 1); half the designs count as good, so
    that no campaign finds them all and stops before the budget."""
    grid = np.linspace(0.0, 1.0, 8)
    x1, x2 = (a.ravel() for a in np.meshgrid(grid, grid))
    noise = np.random.default_rng(0).normal(0.0, 0.3, x1.size)
    table = pd.DataFrame({"x1": x1, "x2": x2, "y": np.sin(5 * x1) + np.cos(3 * x2) + noise})
    (tmp_path / "rough").mkdir()
    table.to_csv(tmp_path / "rough" / "rough.csv", index=False)
    return PoolSpec("rough", "rough/rough.csv", "y", True, 0.5)


def test_stopping_only_recalibration_picks_as_none(rough_pool: PoolSpec, tmp_path: Path) -> None:
    result = run_calibration_benchmark(tmp_path, campaigns=1, budget=20, batch_size=2, pools=[rough_pool])
    pool = result["pools"]["rough"]
    assert pool["picks_identical_to_none"] == [True]
    efficiency = pool["efficiency"]
    assert set(efficiency) == set(VARIANTS)
    assert efficiency["scale_stopping"] == efficiency["none"]
    coverage = pool["coverage"]
    stopping, predictive = coverage["scale_stopping_as_decided"], coverage["predictive"]
    assert stopping["count"] == predictive["count"] == 18  # all but the 2 random designs
    assert stopping["rms_z"] != pytest.approx(predictive["rms_z"]), "the stopping rules' std was rescaled"
    # Same picks, same fits: the stopping rules' intervals are the prequential `scale` ones.
    assert stopping["rms_z"] == pytest.approx(coverage["scale_prequential"]["rms_z"])
    verdict = result["verdict"]["rough"]["stopping_only"]
    assert verdict["picks_identical_to_none"] is True
    low, high = 0.85, 0.95
    assert verdict["coverage_goal_met"] == (low <= stopping["coverage"]["0.9"] <= high)
    expected = VARIANTS["scale_stopping"] if verdict["coverage_goal_met"] else VARIANTS["none"]
    assert result["default"] == expected
