"""Prequential calibration: coverage and reliability numbers, recalibration factors, the record
in the ledger (kept exactly through a SIGKILL and a resume), and the stopping rules using the
recalibrated predictive std."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loop import calibration
from loop.calibration import CalibrationPoint, Prediction
from loop.campaign import Campaign
from loop.config import load_config
from loop.ledger import Ledger
from loop.stopping import ExpectedImprovement
from surrogates.calibrated import noise_variance
from tests.helpers import kill_mid_experiment

#: Half-widths of the 50/80/90/95% intervals: 0.674, 1.282, 1.645, 1.960.
HAND_Z = [0.0, 0.5, -1.0, 1.5, -2.0, 3.0]


def _point(
    cycle: int, value: float, mean: float = 0.0, std: float = 1.0, scale: float = 1.0
) -> CalibrationPoint:
    return CalibrationPoint(
        cycle * 100 + int(value * 10), cycle, "y", Prediction(mean, std / 2, std, scale), value
    )


def test_coverage_and_reliability_of_hand_made_z() -> None:
    summary = calibration.summarize(HAND_Z)
    assert summary["count"] == 6
    assert summary["coverage"] == {"0.5": 2 / 6, "0.8": 3 / 6, "0.9": 4 / 6, "0.95": 4 / 6}
    assert summary["mean_z"] == pytest.approx(2.0 / 6)
    assert summary["rms_z"] == pytest.approx(math.sqrt((0.25 + 1 + 2.25 + 4 + 9) / 6))
    diagram = dict(calibration.reliability(HAND_Z, [0.1, 0.5, 0.9, 0.99]))
    # 0.1: |z| <= 0.126 -> only 0; 0.99: |z| <= 2.576 -> all but 3.
    assert diagram == {0.1: 1 / 6, 0.5: 2 / 6, 0.9: 4 / 6, 0.99: 5 / 6}
    assert calibration.summarize([])["coverage"]["0.9"] is None
    with pytest.raises(ValueError, match="interval level"):
        calibration.coverage(HAND_Z, 1.0)


def test_recalibration_factors_on_hand_made_z() -> None:
    z = [2.0, -2.0] * 5
    assert calibration.fit_scale(z, "scale") == pytest.approx(2.0)
    assert calibration.fit_scale(z, "conformal") == pytest.approx(2.0 / calibration.half_width(0.9))
    assert calibration.fit_scale(z, "none") == 1.0
    assert calibration.fit_scale(z[:9], "scale") == 1.0  # below the minimum count
    # Conformal: the ceil(11 * 0.9) = 10th smallest |z| of 1..10.
    assert calibration.fit_scale([float(k) for k in range(1, 11)], "conformal") == pytest.approx(
        10.0 / calibration.half_width(0.9)
    )
    with pytest.raises(ValueError, match="calibration must be one of"):
        calibration.fit_scale(z, "quantile")  # type: ignore[arg-type]
    # After the factor, the scaled z-scores are calibrated on average.
    assert calibration.summarize([v / 2.0 for v in z])["rms_z"] == pytest.approx(1.0)


def test_point_z_scores_and_prequential_recalibration_look_only_back() -> None:
    point = CalibrationPoint(1, 3, "y", Prediction(1.0, 0.5, 2.0, 4.0), 5.0)
    assert point.z("latent") == 8.0 and point.z("predictive") == 2.0 and point.z("recalibrated") == 0.5
    assert CalibrationPoint(1, 3, "y", Prediction(1.0, 0.5, 2.0), None).z("predictive") is None
    # Cycle 1: ten z = ±3; cycle 2: two z = ±3. The first cycle has no past (factor 1), the
    # second is scaled by RMS 3 of the first.
    points = [_point(1, v) for v in [3.0, -3.0] * 5] + [_point(2, 3.0), _point(2, -3.0)]
    assert sorted(calibration.prequential_z(points, "scale")) == sorted([3.0, -3.0] * 5 + [1.0, -1.0])
    report = calibration.calibration_report(points, ["y"], "scale")
    assert report["objectives"]["y"]["next_std_scale"] == pytest.approx(3.0)
    assert report["objectives"]["y"]["latent"]["rms_z"] == pytest.approx(6.0)
    assert "recalibrated by scale: y x 3" in report["decisions_use"]


def test_reliability_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "reliability.png"
    calibration.plot_reliability(path, {"predictive": calibration.reliability(HAND_Z)})
    assert path.read_bytes()[:4] == b"\x89PNG"


def _scaled_branin(branin_config: Callable[..., Path], method: str, **fields: object) -> Path:
    return branin_config(stopping_extra=f'[surrogate]\ncalibration = "{method}"', **fields)


def test_campaign_records_predictions_and_recalibrates_the_stopping_rules(
    branin_config: Callable[..., Path],
) -> None:
    path = _scaled_branin(branin_config, "scale", max_experiments=16, batch_size=4, acquisition="ucb")
    campaign = Campaign.from_file(path)
    campaign.run()
    points = campaign.ledger.predictions(campaign.id)
    # The 12 model-chosen experiments (not the 4 random ones) each have a prediction.
    assert len(points) == 12 and all(p.value is not None for p in points)
    assert all(p.prediction.predictive_std >= p.prediction.latent_std > 0 for p in points)
    z = calibration.scores(points, "predictive")
    scale = campaign.std_scales()["y"]
    assert scale == pytest.approx(math.sqrt(sum(v * v for v in z) / len(z)))
    # Each decision recorded the factor fitted to earlier cycles' z-scores only.
    assert [p.prediction.std_scale for p in points] == [1.0] * 12  # < 10 earlier z-scores each time
    assert campaign.ledger.cycles(campaign.id)[1].surrogate["loo"]["y"]["count"] == 4

    surrogate = campaign.fit(99)
    assert surrogate is not None
    X = campaign.encode([{"x1": 0.0, "x2": 5.0}, {"x1": 5.0, "x2": 10.0}])
    _, latent = surrogate.predict(X)
    _, judged = campaign.predictive_model(surrogate).predict(X)
    noise = noise_variance(surrogate, X)
    assert noise is not None and float(noise) > 0
    assert judged == pytest.approx((latent + noise) * scale**2)
    # The expected-improvement rule judges by the recalibrated predictive std: a threshold
    # between the EI of the raw and of the recalibrated distribution decides differently.
    data = campaign.dataset()
    assert data is not None
    raw = campaign.acquisition.max_expected_improvement(surrogate, data.Y, None, campaign.space)
    judged_ei = campaign.acquisition.max_expected_improvement(
        campaign.predictive_model(surrogate), data.Y, None, campaign.space
    )
    assert judged_ei != pytest.approx(raw)
    threshold = math.sqrt(raw * judged_ei)
    reason = ExpectedImprovement(threshold).reason(campaign, surrogate)
    assert (reason is not None) == (judged_ei < threshold)
    if reason is not None:
        assert f"predictive std x {scale:.3g}" in reason
    campaign.close()


@pytest.mark.slow
def test_sigkill_and_resume_keep_the_calibration_record_exactly(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = branin_config(
        max_experiments=12,
        batch_size=3,
        initial_designs=3,
        acquisition="ucb",
        oracle_extra=f'latency_s = 0.5\ncapacity = 1\njournal = "{journal}"',
    )
    command = [sys.executable, "-m", "loop.cli", "run", str(path), "--quiet"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_mid_experiment(process, journal, finished=7, timeout_s=120)

    location = load_config(path).ledger_location
    with Ledger(location) as ledger:
        before = ledger.predictions(int(ledger.campaign()["id"]))
    assert before, "the model-chosen batch in flight has its predictions recorded"

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with Ledger(location) as ledger:
        campaign_id = int(ledger.campaign()["id"])
        after = ledger.predictions(campaign_id)
        evaluations = {e.id: e for e in ledger.evaluations(campaign_id)}
    # Every prediction made before the kill is kept exactly; results that arrived before it
    # are joined as they were, and the ones after the kill only fill in missing values.
    kept = {(p.evaluation_id, p.property): p for p in after}
    for p in before:
        again = kept[(p.evaluation_id, p.property)]
        assert again.prediction == p.prediction and again.cycle == p.cycle
        assert p.value is None or again.value == p.value
    # The record is exactly the join of predictions and results: every done evaluation of a
    # model-chosen cycle has its z-score, every failed one none.
    for p in after:
        e = evaluations[p.evaluation_id]
        assert p.value == (e.values.get("y") if e.status == "done" else None)
    assert len(after) == 9  # 12 experiments, 3 random before the first fit


def test_otf_force_coverage_counts_errors_within_k_spreads() -> None:
    from loop.otf.reports import force_coverage

    # Half-widths 0.674 / 1.282 / 1.645 / 1.960 spreads.
    numbers = force_coverage([0.5, 1.0, 1.5, 1.8, 2.5])
    assert numbers["count"] == 5
    assert numbers["coverage"] == {"0.5": 1 / 5, "0.8": 2 / 5, "0.9": 3 / 5, "0.95": 4 / 5}
    assert numbers["rms_ratio"] == pytest.approx(math.sqrt((0.25 + 1 + 2.25 + 3.24 + 6.25) / 5))
    assert force_coverage([])["coverage"]["0.9"] is None
