"""Tests for loop.bench.metrics and the ``bench metrics`` command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from loop.bench import metrics
from loop.bench.cli import app

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "crossed_barrel"
POOL = 600


def _reference(name: str) -> Path:
    """Path of a reference file, skipping the test when the shared data are absent."""
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"shared benchmark data not found at {path} (the shared/ folder beside the repository)")
    return path


def _summary(name: str) -> dict:
    """Summary of one reference top-count file."""
    rows = metrics.load_topcount_csv(_reference(f"reference_topcount_{name}.csv"))
    seeds = metrics.load_seeds(_reference("aggregation_seeds.txt"))
    return metrics.summarize(rows, pool_size=POOL, seeds=seeds)


# ---- reference numbers (Liang et al. 2021, crossed barrel) ----------------------------------------


def test_reference_gp_ard() -> None:
    s = _summary("gp_ard_matern52_lcb")
    assert s["good_count"] == 30
    assert s["cycles_to_top80"] == 34
    assert s["random_cycles_to_top80"] == 479
    assert s["ef_peak"] == pytest.approx(14.56, abs=0.005)
    assert s["ef_peak_cycle"] == 34
    assert s["af_max"] == pytest.approx(14.53, abs=0.005)
    assert s["af_max_level"] == pytest.approx(0.825)


def test_reference_rf() -> None:
    s = _summary("rf_lcb")
    assert s["cycles_to_top80"] == 39
    assert s["ef_peak"] == pytest.approx(14.2, abs=0.05)


def test_reference_gp_iso_pads_stopped_campaigns() -> None:
    s = _summary("gp_iso_matern52_lcb")
    assert s["n_experiments"] == POOL
    assert s["cycles_to_top80"] == 169
    assert s["ef_peak"] == pytest.approx(3.9, abs=0.05)


def test_reference_folds_are_the_authors() -> None:
    seeds = metrics.load_seeds(_reference("aggregation_seeds.txt"))
    folds = metrics.fold_indices(seeds, 50)
    assert len(folds) == 500
    random.seed(seeds[0])
    idx = list(range(50))
    first = random.sample(idx, 10)
    assert folds[0] == first
    assert sorted(i for fold in folds[:5] for i in fold) == list(range(50))


# ---- hand-made trajectories -----------------------------------------------------------------------


def test_topcount_from_choices() -> None:
    good = np.array([False, True, False, True, False])
    assert metrics.topcount_from_choices([0, 1, 2, 3], good).tolist() == [0, 1, 1, 2]


def test_topcount_from_choices_rejects_bad_indices() -> None:
    good = np.array([True, False])
    with pytest.raises(ValueError, match="outside the pool"):
        metrics.topcount_from_choices([0, 2], good)
    with pytest.raises(ValueError, match="more than once"):
        metrics.topcount_from_choices([0, 0], good)


def test_pad_topcounts_pads_finished_campaigns_with_good_count() -> None:
    out = metrics.pad_topcounts([[0, 1, 2], [1, 2, 2, 2]], good_count=2, n_experiments=5)
    assert out.tolist() == [[0, 1, 2, 2, 2], [1, 2, 2, 2, 2]]
    assert metrics.top_percent(out, 2)[0].tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_pad_topcounts_rejects_unfinished_short_campaign() -> None:
    with pytest.raises(ValueError, match="only campaigns that found every good design"):
        metrics.pad_topcounts([[0, 1], [0, 1, 2]], good_count=2)


def test_random_baseline() -> None:
    assert metrics.random_baseline(4).tolist() == [0.25, 0.5, 0.75, 1.0]


def test_fold_plan_generalises_to_few_campaigns() -> None:
    assert metrics.fold_plan(50) == (10, 5)
    assert metrics.fold_plan(10) == (2, 5)
    assert metrics.fold_plan(20) == (4, 5)
    assert metrics.fold_plan(3) == (1, 3)
    folds = metrics.fold_indices([1, 2], 10)
    assert len(folds) == 10
    assert sorted(i for fold in folds[:5] for i in fold) == list(range(10))


def test_fold_averaged_curves_average_each_fold() -> None:
    top = np.arange(12, dtype=float).reshape(4, 3)
    curves = metrics.fold_averaged_curves(top, [0])
    folds = metrics.fold_indices([0], 4)
    for curve, fold in zip(curves, folds, strict=True):
        np.testing.assert_allclose(curve, top[fold].mean(axis=0))


def test_median_band() -> None:
    median, low, high = metrics.median_band(np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]))
    assert median.tolist() == [1.0, 2.0]
    np.testing.assert_allclose(low, [0.1, 1.1])
    np.testing.assert_allclose(high, [1.9, 2.9])


def test_enhancement_factor_rounds_median_only() -> None:
    ef = metrics.enhancement_factor(np.array([0.0, 0.2512, 0.5]), pool_size=10)
    np.testing.assert_allclose(ef, [0.0, 0.25 / 0.2, 0.5 / 0.3])


def test_acceleration_factor_skips_levels_the_bo_curve_jumps_over() -> None:
    # random curve i/N with N = 10: 0.1, 0.2, ..., 1.0; BO jumps 0.1 -> 0.3 -> 1.0.
    levels, af = metrics.acceleration_factor(np.array([0.1, 0.3, 1.0, 1.0]), pool_size=10)
    np.testing.assert_allclose(levels, [0.1, 0.3, 1.0])
    np.testing.assert_allclose(af, [1 / 1, 3 / 2, 10 / 3])


def test_acceleration_factor_pointer_is_forward_only() -> None:
    # The BO curve reaches 0.5 at experiment 1; random (N = 2) reaches 0.5 at 1 and 1.0 at 2.
    levels, af = metrics.acceleration_factor(np.array([0.5, 0.5, 1.0]), pool_size=2)
    np.testing.assert_allclose(levels, [0.5, 1.0])
    np.testing.assert_allclose(af, [1.0, 2 / 3])


def test_experiments_to_reach_uses_the_grid() -> None:
    assert metrics.experiments_to_reach(np.array([0.1, 0.7976, 0.9]), 0.8) == 2
    assert metrics.experiments_to_reach(np.array([0.1, 0.797]), 0.8) is None


def test_summarize_few_campaigns() -> None:
    rows = np.array([[0, 1, 2, 2], [1, 1, 2, 2], [0, 0, 1, 2]])
    s = metrics.summarize(rows, pool_size=4, seeds=[0, 1, 2], good_count=2)
    assert s["n_campaigns"] == 3
    assert s["cycles_to_top100"] is not None
    assert s["random_cycles_to_top100"] == 4
    assert {
        "ef_peak",
        "ef_peak_cycle",
        "af_max",
        "af_max_level",
        "cycles_to_top50",
    } <= s.keys()


@pytest.mark.parametrize(
    ("counts", "good", "message"),
    [
        (np.array([1, 2, 3]), 3, "n_campaigns x n_experiments"),
        (np.array([[0, 1, 4]]), 3, "above good_count"),
        (np.array([[0, -1, 1]]), 3, "non-negative integer"),
        (np.array([[0, 1, 1]]), 0, "good_count must be a positive integer"),
    ],
)
def test_top_percent_rejects_bad_input(counts: np.ndarray, good: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.top_percent(counts, good)


@pytest.mark.parametrize("pool_size", [0, -3])
def test_non_positive_pool_size_is_rejected(pool_size: int) -> None:
    with pytest.raises(ValueError, match="pool_size must be a positive integer"):
        metrics.random_baseline(pool_size)
    with pytest.raises(ValueError, match="pool_size must be a positive integer"):
        metrics.summarize(np.array([[0, 1]]), pool_size=pool_size, seeds=[0], good_count=1)


def test_summarize_rejects_more_experiments_than_pool() -> None:
    with pytest.raises(ValueError, match="more than pool_size"):
        metrics.summarize(np.array([[0, 1, 1]]), pool_size=2, seeds=[0], good_count=1)


def test_load_topcount_csv_skips_comment_and_keeps_ragged_rows(tmp_path: Path) -> None:
    path = tmp_path / "tc.csv"
    path.write_text("# comment\n0,1,2\n1,2\n")
    rows = metrics.load_topcount_csv(path)
    assert [r.tolist() for r in rows] == [[0, 1, 2], [1, 2]]
    path.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no campaign rows"):
        metrics.load_topcount_csv(path)


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_metrics_json_on_reference() -> None:
    path = _reference("reference_topcount_gp_ard_matern52_lcb.csv")
    result = CliRunner().invoke(app, ["metrics", "--topcount", str(path), "--pool-size", "600", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["cycles_to_top80"] == 34
    assert summary["good_count"] == 30


def test_cli_metrics_table_and_bad_input(tmp_path: Path) -> None:
    (tmp_path / "aggregation_seeds.txt").write_text("1\n2\n")
    path = tmp_path / "tc.csv"
    path.write_text("# test\n0,1,1,2\n1,1,2,2\n")
    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["metrics", "--topcount", str(path), "--pool-size", "4", "--good-count", "2"],
    )
    assert ok.exit_code == 0, ok.output
    assert "cycles_to_top80" in ok.output
    bad = runner.invoke(
        app,
        ["metrics", "--topcount", str(path), "--pool-size", "4", "--good-count", "1"],
    )
    assert bad.exit_code == 2
    assert "above" in bad.output
