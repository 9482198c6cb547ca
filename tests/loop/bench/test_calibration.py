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


def test_the_force_goal_is_judged_on_the_recalibrated_components_90_percent_coverage() -> None:
    from loop.bench.calibration import force_goal

    def recalibrated(scale: float, conformal: float) -> dict:
        return {m: {"coverage": {"0.9": c}} for m, c in (("scale", scale), ("conformal", conformal))}

    coverage = {
        "coverage": {"0.9": 1.0},
        "components": {"coverage": {"0.9": 0.74}, "recalibrated": recalibrated(0.851, 0.8497)},
    }
    assert force_goal(coverage) == {"scale": True, "conformal": False}
    coverage["components"]["recalibrated"] = recalibrated(0.96, 0.95)
    assert force_goal(coverage) == {"scale": False, "conformal": True}
    assert force_goal({"coverage": {"0.9": 1.0}}) == {"scale": None, "conformal": None}, (
        "no z-scores, no verdict"
    )


def test_the_near_hull_rule_must_stop_early_every_time_and_never_with_a_structure_missing() -> None:
    from loop.bench.calibration import near_hull_verdict

    def run(stopped: bool, experiments: int, missed: int) -> dict:
        return {
            "stopped_by_rule": stopped,
            "experiments": experiments,
            "budget": 269,
            "near_hull_missed": missed,
        }

    assert near_hull_verdict([run(True, 120, 0), run(True, 200, 0)])["met"] is True
    spent = near_hull_verdict([run(True, 120, 0), run(False, 269, 1)])
    assert spent == {"never_stops_missing": True, "stops_before_budget": False, "met": False}
    early_but_missing = near_hull_verdict([run(True, 120, 1)])
    assert early_but_missing["never_stops_missing"] is False and early_but_missing["met"] is False


def test_the_otf_force_coverage_runs_the_calibrated_loop_per_draw_and_judges_its_components(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import loop.bench.otf as otf
    from loop.bench.calibration import OTF_EXAMPLE, otf_force_coverage
    from loop.otf.reports import pooled_force_coverage

    asked = {}
    coverage = pooled_force_coverage([[1.0] * 8], 5, [[[0.5, -0.5, 2.5]] * 8])

    def run_otf_seeds(config: Path, offsets: list[int], workdir: Path, **options: object) -> dict:
        asked.update(config=config, offsets=offsets, workdir=workdir, **options)
        return {"runs": [], "summary": {"variants": {"calibrated": {"force_coverage": coverage}}}}

    monkeypatch.setattr(otf, "run_otf_seeds", run_otf_seeds)
    out = otf_force_coverage(3, workdir=tmp_path)

    assert asked == {
        "config": OTF_EXAMPLE,
        "offsets": [0, 1, 2],
        "workdir": tmp_path,
        "variants": ("calibrated",),
    }
    assert out["draws"] == 3 and out["force_coverage"] is coverage
    # Two of three components inside 1.645 spreads, before and after a factor of ~1.5: outside the band.
    assert out["goal_met"] == {"scale": False, "conformal": False}
