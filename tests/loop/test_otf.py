"""On-the-fly MD: calibration, failures that do not stop the run, guards, and resume after a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from loop.candidate import Candidate
from loop.errors import ConfigError
from loop.frame import Frame
from loop.ledger import Ledger
from loop.otf import (
    Calibration,
    OTFRun,
    OTFSettings,
    Walker,
    WalkerSpec,
    build_otf_run,
    load_otf_config,
    parse_otf_config,
)
from oracles.base import Measurement, Oracle, Result
from oracles.errors import EvaluationFailed
from surrogates.mlip import CommitteePrediction, MACESettings, MLIPCommittee
from tests.helpers import wait_for

TINY = MACESettings(channels=8, epochs=30, warm_epochs=2, min_steps=4)


def start() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    del atoms[0]
    return atoms


class FlakyEMT(Oracle):
    """EMT single points in this process; every ``fail_every``-th call fails (retryable)."""

    implemented_properties = ("energy_per_atom",)

    def __init__(self, fail_every: int = 0) -> None:
        self.fail_every, self.calls = fail_every, 0

    def evaluate(self, candidate: Candidate) -> Result:
        from loop.structures import structure_from_params

        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise EvaluationFailed(f"SCF did not converge (call {self.calls})", retryable=True)
        atoms = structure_from_params(candidate.params).to_ase_atoms()
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        frame = Frame.from_atoms(atoms, energy, atoms.get_forces(), atoms.get_stress(), id=candidate.id)
        return Result(candidate.id, {"energy_per_atom": Measurement(energy / len(atoms))}, frame=frame)


@pytest.fixture
def make_run(mlip_workers: Executor) -> Callable[..., OTFRun]:
    """Builds a two-walker Cu run whose committee trains in the session's shared workers."""

    def build(tmp_path: Path, oracle: Oracle, steps: int = 60, **settings: object) -> OTFRun:
        # Audits every 10 steps: a calibrating run takes its first ratios from them.
        options = {"initial_threshold_ev_per_a": 0.02, "stop_after_calls": 0, "audit_every": 10, **settings}
        return OTFRun(
            "cu",
            start(),
            [WalkerSpec("a", steps, (300.0, 900.0), seed=1), WalkerSpec("b", steps, (600.0, 600.0), seed=2)],
            MLIPCommittee(["Cu"], TINY, size=2, executor=mlip_workers),
            oracle,
            Ledger(tmp_path / "otf.db"),
            tmp_path,
            OTFSettings(**options),  # type: ignore[arg-type]
        )

    return build


# --- calibration ------------------------------------------------------------------------------


def test_calibrated_threshold_meets_the_target_miss_rate() -> None:
    settings = OTFSettings(tolerance_ev_per_a=0.3, target_miss_rate=0.02, min_calibration_calls=5)
    calibration = Calibration(settings)
    rng = np.random.default_rng(0)
    for u in rng.uniform(0.05, 0.2, 2000):  # steps: the committee's uncertainty
        calibration.observe_step(float(u))
    for _ in range(4):
        calibration.observe_call(0.1, 0.25)
    assert calibration.update() == settings.initial_threshold_ev_per_a, "too few calls to calibrate"
    for ratio in rng.uniform(1.0, 3.0, 50):  # errors are 1-3x the spread
        calibration.observe_call(0.1, 0.1 * float(ratio))
    threshold = calibration.update()
    assert calibration.estimated_miss_rate(threshold) <= 0.02
    # Just above it the estimate exceeds the target: the threshold is as high as allowed.
    above = min(u for u in calibration.recent if u > threshold)
    assert calibration.estimated_miss_rate(above) > 0.02
    # With errors of at most 3x the spread, nothing below 0.1 eV/Å can miss 0.3 eV/Å.
    assert threshold >= 0.1
    fixed = Calibration(OTFSettings(calibrate=False))
    fixed.ratios, fixed.recent = list(calibration.ratios), calibration.recent
    assert fixed.update() == fixed.settings.initial_threshold_ev_per_a


def test_the_calibration_keeps_each_calls_force_z_scores_across_a_checkpoint() -> None:
    settings = OTFSettings()
    calibration = Calibration(settings)
    calibration.observe_call(0.1, 0.2, [1.0, -2.0, 0.5])
    calibration.observe_call(0.0, 0.1)  # no spread: no ratio, no z-scores
    restored = Calibration.from_dict(settings, json.loads(json.dumps(calibration.as_dict())))
    assert restored.force_z == [[1.0, -2.0, 0.5], []] and restored.ratios == [2.0]
    older = {k: v for k, v in calibration.as_dict().items() if k != "force_z"}  # a checkpoint from before
    assert Calibration.from_dict(settings, older).force_z == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"tolerance_ev_per_a": 0}, "otf.tolerance_ev_per_a: Input should be greater than 0"),
        ({"target_miss_rate": 1.5}, "otf.target_miss_rate: Input should be less than 1"),
        ({"threshold_bounds": (0.5, 0.1)}, "threshold_bounds"),
        ({"label_every": 0}, "otf.label_every: Input should be greater than or equal to 1"),
    ],
)
def test_bad_settings_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OTFSettings(**bad)  # type: ignore[arg-type]


def test_bad_walkers_and_starts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"walker\.steps: Input should be greater than or equal to 1"):
        WalkerSpec("w", 0)
    with pytest.raises(ConfigError, match="temperature_k"):
        WalkerSpec("w", 10, (300.0, -5.0))
    crushed = start()
    crushed.positions[1] = crushed.positions[0] + 0.4
    with pytest.raises(ConfigError, match=r"atoms 0 and 1 .* closer than min_distance_a"):
        OTFRun(
            "cu",
            crushed,
            [WalkerSpec("w", 5)],
            MLIPCommittee(["Cu"]),
            FlakyEMT(),
            Ledger(tmp_path / "x.db"),
            tmp_path,
        )


# --- runs -------------------------------------------------------------------------------------


def test_an_oracle_failing_on_a_fifth_of_frames_does_not_stop_the_run(
    tmp_path: Path, make_run: Callable[..., OTFRun]
) -> None:
    oracle = FlakyEMT(fail_every=5)
    run = make_run(tmp_path, oracle, steps=40, max_oracle_calls=15)
    try:
        report = run.run()
    finally:
        run.committee.close()
    evaluations = run.ledger.evaluations(run.id)
    failed = [e for e in evaluations if e.status == "failed"]
    assert report.md_steps == 80 and not report.lost_walkers, "both walkers ran to the end"
    assert oracle.calls == report.oracle_calls == len(evaluations) >= 10
    assert len(failed) == report.failed_calls == oracle.calls // 5
    assert all("SCF did not converge" in (e.error or "") and e.retryable for e in failed)
    assert report.dataset_size == len(run.frames()) == oracle.calls - len(failed)
    assert report.retrains >= 2 and 0 < report.oracle_step_fraction < 1
    coverage = report.as_dict()["force_coverage"]
    assert coverage["count"] == len(run.calibration.ratios) > 0
    assert coverage["components"]["count"] == sum(len(z) for z in run.calibration.force_z) > 0
    assert all(0.0 <= c <= 1.0 for c in coverage["coverage"].values())


def test_walkers_pausing_together_never_exceed_the_oracle_budget(
    tmp_path: Path, make_run: Callable[..., OTFRun]
) -> None:
    oracle = FlakyEMT()
    run = make_run(tmp_path, oracle, steps=40, initial_frames=4, max_oracle_calls=5)
    try:
        run.close_round(run.initial_labels(), 0.0)
        pauses = [run.advance(walker) for walker in run.walkers]
        assert [p.kind for p in pauses] == ["uncertain", "uncertain"], "both walkers doubt a frame"
        labels = run.label(pauses)
    finally:
        run.committee.close()
    assert [label.walker for label in labels] == ["a"], "one call was left in the budget"
    assert oracle.calls == len(run.ledger.evaluations(run.id)) == 5
    assert not run.calling


def test_colliding_atoms_roll_the_walker_back_with_a_clear_log_line_and_the_frame_is_labelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make_run: Callable[..., OTFRun]
) -> None:
    quiet = {"initial_threshold_ev_per_a": 10.0, "calibrate": False, "audit_every": 0}
    run = make_run(tmp_path, FlakyEMT(), steps=40, snapshot_every=10, **quiet)
    try:
        run.close_round(run.initial_labels(), 0.0)
        walker = run.walkers[0]
        assert run.advance(walker).kind == "finished"  # the committee is never unsure: no pauses
        assert walker.step == 40 and walker.snapshot.step == 40
        walker.spec = WalkerSpec("a", 60, (300.0, 900.0), seed=1)  # 20 more steps
        walker.atoms.positions[1] = walker.atoms.positions[0] + [0.3, 0.3, 0.0]
        with caplog.at_level(logging.WARNING, logger="alloop.otf"):
            pause = run.advance(walker)
        assert pause.kind == "uncertain" and pause.step == 41, "the frame that tripped the guard"
        assert pause.atoms is not None and pause.atoms.get_distance(0, 1, mic=True) < 1.5
        labels = run.label([pause])
    finally:
        run.committee.close()
    lines = [r.getMessage() for r in caplog.records]
    logged = "walker a: atoms 0 and 1 collided"
    assert any(logged in line and "rolled back to step 40" in line for line in lines)
    assert walker.rollbacks == 1 and walker.step == 40 and not walker.lost
    assert labels[0].failure is None and labels[0].error is not None, "learnt from, with its error measured"


def test_an_audit_labels_the_least_sure_frame_once_the_weighted_steps_add_up(
    tmp_path: Path, make_run: Callable[..., OTFRun]
) -> None:
    # The threshold is never reached; each step counts as uncertainty / threshold towards the audit.
    never_doubts = {"initial_threshold_ev_per_a": 10.0, "calibrate": False, "audit_every": 0.1}
    run = make_run(tmp_path, FlakyEMT(), steps=400, **never_doubts)
    try:
        run.close_round(run.initial_labels(), 0.0)
        walker = run.walkers[0]
        pause = run.advance(walker)
        run.settle()
        uncertainties = np.array(run.calibration.recent)  # one per step of this walker
        weighted = np.cumsum(uncertainties / 10.0)
        assert pause.kind == "uncertain" and walker.step == len(uncertainties) < 400
        assert weighted[-1] >= 0.1 > weighted[-2], "audited on the step its weighted steps reached 0.1"
        eligible = uncertainties[9:]  # steps 10 on: steps 1-9 neighbour the labelled start
        assert pause.uncertainty == eligible.max()
        assert pause.step == 10 + int(np.argmax(eligible)), "the least sure frame, not the current one"
        assert pause.atoms is not None and pause.prediction is not None
        labels = run.label([pause])
        assert labels[0].step == pause.step and labels[0].error is not None
        assert walker.last_call == walker.step and walker.least_sure is None, "a new stretch begins"
        assert walker.last_labelled == pause.step
        assert walker.weighted_steps == 0.0
    finally:
        run.committee.close()


def test_until_calibrated_a_walker_only_audits_then_labels_what_it_doubts(
    tmp_path: Path, make_run: Callable[..., OTFRun]
) -> None:
    # Every frame is above a guess of 0.001 eV/Å; a fixed threshold labels one each 10 steps.
    doubts_all = {"initial_threshold_ev_per_a": 0.001, "audit_every": 25, "min_calibration_calls": 2}
    run = make_run(tmp_path, FlakyEMT(), steps=100, **doubts_all)
    try:
        run.close_round(run.initial_labels(), 0.0)
        walker = run.walkers[0]
        assert run.calibration.burning_in
        pause = run.advance(walker)
        run.settle()
        uncertainties = np.array(run.calibration.recent)
        assert walker.step == 25, "an audit after 25 steps, each counted fully, not a doubt at step 10"
        assert pause.step == 10 + int(np.argmax(uncertainties[9:])), "the least sure frame of the stretch"
        run.calibration.observe_call(0.1, 0.1)
        run.calibration.observe_call(0.1, 0.1)
        assert not run.calibration.burning_in
        pause = run.advance(walker)
        assert pause.step == walker.step == 35, "calibrated: the frame above the threshold, 10 steps on"
    finally:
        run.committee.close()
    (tmp_path / "fixed").mkdir()
    fixed = make_run(tmp_path / "fixed", FlakyEMT(), steps=100, calibrate=False, **doubts_all)
    try:
        fixed.close_round(fixed.initial_labels(), 0.0)
        assert not fixed.calibration.burning_in
        assert fixed.advance(fixed.walkers[0]).step == 10
    finally:
        fixed.committee.close()


def spread(uncertainty: float) -> CommitteePrediction:
    """Two members whose forces differ by ``2 x uncertainty`` on every atom."""
    forces = np.zeros((2, 3, 3))
    forces[0, :, 0], forces[1, :, 0] = uncertainty, -uncertainty
    return CommitteePrediction(np.zeros(2), forces, np.zeros((2, 6)))


def test_an_audit_passes_over_neighbours_of_the_last_labelled_frame(
    tmp_path: Path, make_run: Callable[..., OTFRun]
) -> None:
    run = make_run(tmp_path, FlakyEMT(), min_steps_between_calls=10)
    try:
        walker = run.walkers[0]
        walker.step = 60
        walker.called(58)  # an audit at step 60 labelled the end of its stretch
        assert (walker.last_call, walker.last_labelled) == (60, 58)
        for step, uncertainty in ((61, 0.9), (67, 0.8), (68, 0.3), (75, 0.5), (80, 0.4)):
            walker.step = step
            walker.consider(spread(uncertainty), min_gap=10)
        assert walker.least_sure is not None
        assert walker.least_sure.step == 75, "the least sure frame at least 10 steps from step 58"
        assert walker.state()["last_labelled"] == 58
    finally:
        run.committee.close()


@pytest.mark.parametrize(("audit_every", "audits"), [(60, True), (100, False)])
def test_a_finishing_walker_audits_its_last_stretch_if_it_is_worth_half_an_audit(
    tmp_path: Path, audit_every: int, audits: bool, make_run: Callable[..., OTFRun]
) -> None:
    # Calibrating with too few ratios: no doubts, every step counts fully towards the audit.
    run = make_run(tmp_path, FlakyEMT(), steps=40, audit_every=audit_every, min_calibration_calls=50)
    try:
        run.close_round(run.initial_labels(), 0.0)
        walker = run.walkers[0]
        pause = run.advance(walker)
        run.settle()
        uncertainties = np.array(run.calibration.recent)
        assert walker.finished and walker.step == len(uncertainties) == 40
        if audits:  # 40 steps >= 60 / 2
            assert pause.kind == "uncertain" and pause.step == 10 + int(np.argmax(uncertainties[9:]))
            assert walker.least_sure is None and walker.weighted_steps == 0.0
        else:  # 40 steps < 100 / 2
            assert pause.kind == "finished" and pause.atoms is None
    finally:
        run.committee.close()


def test_steps_on_a_temperature_ramp_are_not_quiet(tmp_path: Path, make_run: Callable[..., OTFRun]) -> None:
    never_doubts = {"initial_threshold_ev_per_a": 10.0, "calibrate": False, "audit_every": 0}
    run = make_run(tmp_path, FlakyEMT(), steps=40, stop_after_calls=1, stop_quiet_steps=30, **never_doubts)
    try:
        run.close_round(run.initial_labels(), 0.0)
        heating, steady = run.walkers  # 300 -> 900 K, and 600 K throughout
        run.progress.calls_within_tolerance = 1
        assert run.advance(steady).kind == "finished"
        run.settle()
        assert run.progress.quiet_steps == 40
        assert run.check_stopping() is None, "the heating walker has yet to reach 900 K"
        assert run.advance(heating).kind == "finished"
        run.settle()
        assert run.progress.quiet_steps == 42, "only its last two steps, at 900 K, count"
        assert run.check_stopping() is not None and "42 steps" in (run.progress.stopped_calling or "")
    finally:
        run.committee.close()


def test_a_run_does_not_depend_on_how_its_walkers_threads_interleave(
    tmp_path: Path, make_run: Callable[..., OTFRun], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window shorter than a round's steps: which steps it keeps decides the threshold.
    settings = {"window_steps": 15, "min_calibration_calls": 2, "stop_after_calls": 2, "stop_quiet_steps": 20}
    outcomes = []
    for slow in ("a", "b"):  # one walker steps slower than the other, then the other way round
        md_step = Walker.md_step

        def step(walker: Walker, slow: str = slow, md_step: Callable[[Walker], None] = md_step) -> None:
            if walker.spec.name == slow:
                time.sleep(0.004)
            md_step(walker)

        monkeypatch.setattr(Walker, "md_step", step)
        (tmp_path / slow).mkdir()
        run = make_run(
            tmp_path / slow, FlakyEMT(), steps=60, max_oracle_calls=10, final_fit=False, **settings
        )
        try:
            report = run.run()
        finally:
            run.committee.close()
            monkeypatch.undo()
        labelled = [e.candidate_id for e in run.ledger.evaluations(run.id)]
        outcomes.append((labelled, list(run.calibration.recent), report.threshold, run.progress.quiet_steps))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("final_fit", [True, False])
def test_once_calling_stops_the_committee_is_refitted_from_scratch_on_every_frame(
    tmp_path: Path, final_fit: bool, make_run: Callable[..., OTFRun]
) -> None:
    run = make_run(tmp_path, FlakyEMT(), steps=30, max_oracle_calls=7, final_fit=final_fit)
    fits: list[tuple[int, bool]] = []
    fit = run.committee.fit

    def recording_fit(frames: list, from_scratch: bool = False) -> MLIPCommittee:
        fits.append((len(frames), from_scratch))
        return fit(frames, from_scratch=from_scratch)

    run.committee.fit = recording_fit  # type: ignore[method-assign]
    try:
        report = run.run()
    finally:
        run.committee.close()
    size = report.dataset_size
    assert report.oracle_calls == size >= 7, "the budget ran out (both walkers' last frames count)"
    scratch = [n for n, from_scratch in fits if from_scratch]
    if final_fit:
        assert scratch == [size] and report.final_fit_frames == size
        assert fits[-1] == (size, True), "no warm fit after the final one: nothing new came in"
    else:
        assert scratch == [] and report.final_fit_frames is None


def test_a_run_killed_mid_trajectory_resumes_at_its_checkpoint_without_repeating_oracle_calls(
    tmp_path: Path, mlip_workers: Executor
) -> None:
    config = tmp_path / "otf.toml"
    config.write_text(
        textwrap.dedent(
            """
            [run]
            name = "cu"
            ledger = "otf.db"
            workdir = "runs"

            [structure]
            element = "Cu"
            a = 3.61
            repeat = [2, 1, 1]
            vacancies = 1

            [[walkers]]
            name = "heat"
            steps = 80
            temperature_k = [300, 1200]
            seed = 3

            [committee]
            size = 2
            channels = 8
            epochs = 30
            min_steps = 4

            [otf]
            initial_threshold_ev_per_a = 0.02
            audit_every = 10
            stop_after_calls = 0

            [oracle]
            calculator = "emt"
            wall_time_s = 60
            """
        )
    )
    checkpoint = tmp_path / "runs" / "cu" / "checkpoint" / "state.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "otf", str(config), "--quiet"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: checkpoint.is_file() and json.loads(checkpoint.read_text())["progress"]["round"] >= 3,
            timeout_s=300,
        )
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    state = json.loads(checkpoint.read_text())
    at_checkpoint = state["walkers"]["heat"]["step"]
    assert 0 < at_checkpoint < 80, "killed mid-trajectory"

    settings = load_otf_config(config)
    with Ledger(settings.ledger_location) as ledger:
        run = build_otf_run(settings, ledger, executor=mlip_workers)
        try:
            assert run.resumed_from == {"heat": at_checkpoint}
            report = run.run()
        finally:
            run.committee.close()
        evaluations = ledger.evaluations(run.id)
    assert report.resumed_from_steps == {"heat": at_checkpoint}
    assert run.walkers[0].step == 80
    # One job folder per oracle call: a repeated call would get a "-2" folder.
    jobs = [p.name for p in (tmp_path / "runs" / "cu").iterdir() if p.is_dir() and p.name != "checkpoint"]
    frames = [j for j in jobs if not j.startswith("reference-")]
    assert not [j for j in jobs if j.endswith("-2")], "no frame was sent to the oracle twice"
    assert sorted(frames) == sorted(
        e.candidate_id
        for e in evaluations
        if e.status in ("done", "failed") and "interrupted" not in (e.error or "")
    )
    assert report.oracle_calls == len(evaluations)

    # Run again from the command line: nothing is left to do, and --json's stdout is only the report
    # (mace-torch's import notice goes to stderr).
    again = subprocess.run(
        [sys.executable, "-m", "loop.cli", "otf", str(config), "--json"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    final = json.loads(again.stdout)
    assert final["md_steps"] == report.md_steps and final["oracle_calls"] == report.oracle_calls
    assert final["final_fit_frames"] == report.dataset_size


def test_a_walker_runs_on_any_calculator_and_reports_each_step_its_guards_let_through() -> None:
    seen: list[int] = []
    walker = Walker(WalkerSpec("w", 50, seed=3), start(), EMT(), OTFSettings(snapshot_every=2))
    walker.on_step = lambda w: seen.append(w.step)
    assert [walker.advance() for _ in range(4)] == [None] * 4
    assert seen == [1, 2, 3, 4] and walker.snapshot.step == 4
    walker.atoms.positions[1] = walker.atoms.positions[0] + [0.3, 0.3, 0.0]
    tripped = walker.advance()
    assert tripped is not None and tripped.step == 5 and "collided" in tripped.reason
    assert "energy" in tripped.results, "the calculator's results where it tripped"
    assert seen == [1, 2, 3, 4] and walker.step == 4, "rolled back, and the tripped step not reported"


def test_a_bad_config_value_is_one_config_error_naming_its_key() -> None:
    base = {"run": {"name": "x"}, "walkers": [{"name": "a", "steps": 5}], "oracle": {"calculator": "emt"}}
    with pytest.raises(ConfigError, match=r"committee\.size: Input should be greater than or equal to 2"):
        parse_otf_config({**base, "committee": {"size": 1}})
    with pytest.raises(ConfigError, match=r"committee\.chanels: unknown key"):
        parse_otf_config({**base, "committee": {"chanels": 8}})
    with pytest.raises(ConfigError, match=r"walkers\.0\.steps: .*; walkers\.0\.bogus: unknown key"):
        parse_otf_config({**base, "walkers": [{"name": "a", "steps": 0, "bogus": 1}]})
    with pytest.raises(ConfigError, match=r"oracle\.mode: Input should be 'single_point'"):
        parse_otf_config({**base, "oracle": {"calculator": "emt", "mode": "relax"}})


def test_an_otf_oracle_refuses_a_pre_relaxation_its_single_point_labels_would_not_see(tmp_path: Path) -> None:
    # An OTF run labels each MD frame as it is: a pre-relaxed frame would label another structure,
    # so the configuration refuses `prerelax`, naming the key, before anything is built.
    with pytest.raises(ConfigError, match=r"oracle: .*'prerelax' does not apply to an on-the-fly run"):
        parse_otf_config(
            {
                "run": {"name": "x"},
                "structure": {"element": "Cu", "a": 3.61},
                "walkers": [{"name": "a", "steps": 5}],
                "oracle": {"calculator": "emt", "prerelax": "nope"},
            },
            base_dir=tmp_path,
        )
    assert not (tmp_path / "runs").exists()
