"""Prequential calibration: coverage and reliability numbers, recalibration factors, the record
in the ledger (kept exactly through a SIGKILL and a resume), and the stopping rules using the
recalibrated predictive std."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loop import calibration
from loop.calibration import CalibrationPoint, Prediction
from loop.campaign import Campaign
from loop.config import load_config
from loop.errors import ConfigError
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


@pytest.mark.parametrize(
    ("method", "scope", "acquisition"),
    [
        ("scale", "all", "recalibrated by scale: y x 3"),
        ("scale", "stopping", "not recalibrated"),
        ("none", "all", "not recalibrated"),
    ],
)
def test_report_names_the_std_each_decision_used(method: str, scope: str, acquisition: str) -> None:
    points = [_point(1, v) for v in [3.0, -3.0] * 5]
    report = calibration.calibration_report(points, ["y"], method, scope=scope)  # type: ignore[arg-type]
    stopping = "recalibrated by scale: y x 3" if method == "scale" else "not recalibrated"
    assert report["std_used"] == {
        "stopping": f"predictive std (with the fitted noise), {stopping}",
        "acquisition": f"latent std (the model's own), {acquisition}",
    }
    assert report["applies_to"] == scope


def test_reliability_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "reliability.png"
    calibration.plot_reliability(path, {"predictive": calibration.reliability(HAND_Z)})
    assert path.read_bytes()[:4] == b"\x89PNG"


def _scaled_branin(
    branin_config: Callable[..., Path], method: str, applies_to: str | None = None, **fields: object
) -> Path:
    scope = "" if applies_to is None else f'\ncalibration_applies_to = "{applies_to}"'
    return branin_config(stopping_extra=f'[surrogate]\ncalibration = "{method}"{scope}', **fields)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"surrogate.calibration_applies_to": "acquisition"}, "surrogate.calibration_applies_to"),
        (
            {"surrogate.calibration": "none", "surrogate.calibration_applies_to": "stopping"},
            "applies only with calibration = 'scale'",
        ),
        (
            {"surrogate.calibration": "scale", "surrogate.calibration_applies_to": "stop"},
            "surrogate.calibration_applies_to: Input should be 'all' or 'stopping'",
        ),
    ],
)
def test_calibration_scope_errors_name_the_key(
    branin_config: Callable[..., Path], overrides: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)) as raised:
        load_config(branin_config(), overrides)
    assert "surrogate.calibration_applies_to" in str(raised.value)


def test_configurations_without_a_calibration_scope_keep_their_hash(
    branin_config: Callable[..., Path],
) -> None:
    scaled = load_config(_scaled_branin(branin_config, "scale"))
    assert "calibration_applies_to" not in scaled.identity()["surrogate"]
    assert load_config(_scaled_branin(branin_config, "scale", "all", name="all.toml")).hash == scaled.hash
    stopping = load_config(_scaled_branin(branin_config, "scale", "stopping", name="stopping.toml"))
    assert stopping.identity()["surrogate"]["calibration_applies_to"] == "stopping"
    assert stopping.hash != scaled.hash


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


def test_stopping_only_recalibration_picks_as_none_and_stops_by_the_recalibrated_std(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    # 4 random designs, then 4 UCB batches of 4: the last one is chosen with 12 z-scores known,
    # enough for a factor other than 1.
    fields: dict[str, object] = {"max_experiments": 20, "batch_size": 4, "acquisition": "ucb"}
    runs = {
        "none": _scaled_branin(branin_config, "none", name="none.toml", ledger="none.db", **fields),
        "stopping": _scaled_branin(
            branin_config, "scale", "stopping", name="s.toml", ledger="s.db", **fields
        ),
        "all": _scaled_branin(branin_config, "scale", "all", name="all.toml", ledger="all.db", **fields),
    }
    campaigns = {name: Campaign.from_file(path) for name, path in runs.items()}
    picks = {}
    for name, campaign in campaigns.items():
        campaign.run()
        picks[name] = [e.candidate_id for e in campaign.ledger.evaluations(campaign.id)]
    stopping = campaigns["stopping"]
    scales = {p.prediction.std_scale for p in stopping.ledger.predictions(stopping.id)}
    assert len(scales) == 2 and 1.0 in scales, "the last batch was chosen with a recalibrated std"
    assert picks["stopping"] == picks["none"], "the acquisition kept the model's own std"
    assert picks["all"] != picks["none"], "recalibrating the acquisition too changes its picks"

    # The expected-improvement rule judges by the recalibrated predictive std: a threshold
    # between the EI of the raw and of the recalibrated distribution stops one campaign only.
    judged = ("none", "stopping")
    fitted = {name: campaigns[name].fit(99) for name in judged}
    data = stopping.dataset()
    assert data is not None
    scale = stopping.std_scales()["y"]
    assert scale != pytest.approx(1.0)
    ei = {}
    for name in judged:
        surrogate = fitted[name]
        assert surrogate is not None
        model = campaigns[name].predictive_model(surrogate)
        ei[name] = stopping.acquisition.max_expected_improvement(model, data.Y, None, stopping.space)
    threshold = math.sqrt(ei["none"] * ei["stopping"])
    rule = ExpectedImprovement(threshold)
    reasons = {name: rule.reason(campaigns[name], fitted[name]) for name in judged}
    assert (reasons["none"] is None) != (reasons["stopping"] is None)
    if reasons["stopping"] is not None:
        assert f"predictive std x {scale:.3g}" in reasons["stopping"]
    else:
        assert reasons["none"] is not None and "predictive std x 1" in reasons["none"]
    for campaign in campaigns.values():
        campaign.close()

    # The status says which std each decision used.
    from typer.testing import CliRunner

    from loop.cli import app

    status = CliRunner().invoke(app, ["status", str(tmp_path / "s.db"), "--json"])
    assert status.exit_code == 0, status.output
    used = json.loads(status.output)["calibration"]["std_used"]
    assert used == {
        "stopping": f"predictive std (with the fitted noise), recalibrated by scale: y x {scale:.3g}",
        "acquisition": "latent std (the model's own), not recalibrated",
    }
    text = CliRunner().invoke(app, ["status", str(tmp_path / "s.db")])
    assert "stopping rules use" in text.output and "acquisition uses" in text.output


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


def test_prequential_scores_divide_each_score_by_the_factor_of_the_earlier_ones_only() -> None:
    z = [2.0, -2.0, 2.0, 4.0]
    # min_count 2: the first two keep factor 1; the third is scaled by RMS(2, -2) = 2; the
    # fourth by RMS(2, -2, 2) = 2, never by a factor that has seen it.
    assert calibration.prequential_scores(z, "scale", min_count=2) == [2.0, -2.0, 1.0, 2.0]
    assert calibration.prequential_scores(z, "none", min_count=1) == z
    conformal = calibration.prequential_scores(z, "conformal", min_count=2)
    assert conformal[:2] == [2.0, -2.0]
    assert conformal[2] == pytest.approx(2.0 / (2.0 / calibration.half_width(0.9)))


def test_otf_force_coverage_after_recalibration_is_prequential_within_each_run() -> None:
    from loop.otf.reports import force_coverage, pooled_force_coverage

    # Spreads four times too small: every ratio 4, outside every interval before recalibration.
    # Recalibrated by the ratios before it, from the third call on each ratio is 4 / 4 = 1.
    numbers = force_coverage([4.0] * 6, min_count=2)
    assert numbers["coverage"]["0.9"] == 0.0 and numbers["min_count"] == 2
    scaled = numbers["recalibrated"]["scale"]
    assert scaled["coverage"]["0.9"] == pytest.approx(4 / 6)
    assert scaled["rms_ratio"] == pytest.approx(math.sqrt((2 * 16 + 4 * 1) / 6))
    # Pooled over runs, a run's factor never comes from another run's calls.
    pooled = pooled_force_coverage([[4.0] * 3, [4.0] * 3], min_count=2)
    assert pooled["count"] == 6
    assert pooled["recalibrated"]["scale"]["coverage"]["0.9"] == pytest.approx(2 / 6)


def test_force_components_z_scores_are_recalibrated_call_by_call() -> None:
    from loop.otf.reports import force_coverage

    # Three calls of two components each, all z = 2 (outside the 90% interval, |z| <= 1.645).
    numbers = force_coverage([1.0, 1.0, 1.0], min_count=1, force_z=[[2.0, -2.0]] * 3)
    components = numbers["components"]
    assert components["count"] == 6 and components["coverage"]["0.9"] == 0.0
    assert components["rms_z"] == pytest.approx(2.0)
    # From the second call on, each is divided by the RMS of the calls before it (2).
    scaled = components["recalibrated"]["scale"]
    assert scaled["coverage"]["0.9"] == pytest.approx(4 / 6)
    assert "components" not in force_coverage([1.0]), "no z-scores: only the per-frame ratios"
