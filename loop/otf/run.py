"""The on-the-fly run: rounds of walking, labelling and retraining, with checkpoints.

Walkers move on the committee's mean forces. A *round* runs every unfinished walker until it
pauses on a frame the call policy (:mod:`loop.otf.policy`) wants labelled, or finishes; then it
labels the paused frames with the oracle (their ledger rows are committed as results arrive),
retrains the committee warm, recalibrates (:mod:`loop.otf.calibration`), applies the stopping
rule, writes a checkpoint and lets the walkers go on. The walkers of a round run concurrently
and share one dataset; their steps are folded into the counts walker by walker, so the run does
not depend on how their threads interleave. A frame that tripped a guard is labelled (the
committee was wrong there).

**Final fit.** Warm starts follow the order the frames came in. Once the loop stops calling (or
every walker has finished), the committee is refitted from scratch on every labelled frame
(``final_fit``), so the potential a run delivers depends on its data, not on its path; the
walkers finish on it.

**Failures.** An oracle call that fails is recorded in the ledger and skipped; the walker goes
on. **Resume.** A checkpoint after every round holds the walkers' MD state (positions,
momenta, cell, random state, snapshot), the committee's weights and the calibration; the
dataset is the ledger's done evaluations. A killed run resumes at the checkpoint's steps; a
frame labelled after the checkpoint is found in the ledger, never labelled again.

:class:`OTFRun` exposes the stages (:meth:`~OTFRun.advance`, :meth:`~OTFRun.label`,
:meth:`~OTFRun.retrain`, :meth:`~OTFRun.checkpoint`) so a workflow engine can run each as a
task; :meth:`~OTFRun.run` composes them in plain Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from loop.errors import ConfigError
from loop.ledger import Ledger
from loop.otf.calibration import Calibration
from loop.otf.labelling import Labeller, frame_of
from loop.otf.policy import CallPolicy, Step
from loop.otf.reports import Label, OTFReport, Progress, RoundReport, force_coverage
from loop.otf.settings import OTFSettings, WalkerSpec
from loop.otf.walker import Pause, Walker
from oracles.base import Oracle
from surrogates.mlip import CommitteeCalculator, CommitteePrediction, Frame, MLIPCommittee

log = logging.getLogger("alloop.otf")


class OTFRun:
    """An on-the-fly training run; see the module docstring.

    Args:
        name: Campaign name in the ledger.
        start: The starting structure of every walker.
        walkers: The walkers.
        committee: The MLIP committee (fitted or not; a checkpoint overrides its weights).
        oracle: Labels frames; its results carry a ``frame`` with energy, forces and optionally
            stress (the DFT runner's).
        ledger: Where every oracle call is recorded.
        workdir: Checkpoints go to ``<workdir>/checkpoint``.
        settings: Thresholds, guards and the stopping rule.
        config: The run's configuration, stored in the ledger (its identity).
        on_round: Called with each round's report (flows publish artifacts there).
        on_step: Given to every walker: called with it after each step its guards let through.
    """

    def __init__(
        self,
        name: str,
        start: Atoms,
        walkers: Sequence[WalkerSpec],
        committee: MLIPCommittee,
        oracle: Oracle,
        ledger: Ledger,
        workdir: str | Path,
        settings: OTFSettings | None = None,
        config: Mapping[str, Any] | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        on_step: Callable[[Walker], None] | None = None,
    ) -> None:
        names = [w.name for w in walkers]
        if not walkers or len(set(names)) != len(names):
            raise ConfigError(f"walkers need distinct names, got {names}")
        from oracles.dft_job import min_distance

        distance, i, j = min_distance(start)
        self.settings = settings or OTFSettings()
        if distance < self.settings.min_distance_a:
            raise ConfigError(
                f"the starting structure has atoms {i} and {j} {distance:.2f} Å apart, "
                f"closer than min_distance_a = {self.settings.min_distance_a} Å"
            )
        self.name, self.start = name, start.copy()
        self.committee, self.oracle, self.ledger = committee, oracle, ledger
        self.workdir = Path(workdir)
        self.on_round = on_round
        self.policy = CallPolicy(self.settings)
        identity = dict(
            config or {"walkers": [asdict(w) for w in walkers], "settings": asdict(self.settings)}
        )
        digest = json.dumps(identity, sort_keys=True, default=str)
        self.id = ledger.open_campaign(name, identity, hashlib.sha256(digest.encode()).hexdigest()[:16], 0)
        self.run_id = ledger.start_run(self.id)
        self.labeller = Labeller(name, ledger, self.id, self.run_id)
        self.calibration = Calibration(self.settings)
        self.progress = Progress()
        self.walkers = [
            Walker(spec, start, CommitteeCalculator(committee), self.settings, on_step) for spec in walkers
        ]
        self.resumed_from: dict[str, int] | None = None
        self._lock = threading.Lock()  # walkers advance in threads; the step count is shared
        self._started = time.perf_counter()
        self._recover()

    # --- the dataset (the ledger's done evaluations) -----------------------------------------

    def frames(self) -> list[Frame]:
        """Every labelled frame, in the order it was labelled."""
        return [frame_of(e) for e in self.ledger.evaluations(self.id, ["done"])]

    def _recover(self) -> None:
        """Settle calls a dead process left in flight; restore the last checkpoint if any."""
        for evaluation in self.ledger.evaluations(self.id, ["proposed", "submitted"]):
            self.ledger.record_failure(
                evaluation.id,
                "interrupted: the process stopped while this frame was being labelled; not sent again",
                retryable=True,
            )
        state_file = self.workdir / "checkpoint" / "state.json"
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        self.committee.load(self.workdir / "checkpoint" / state["committee"])
        self.calibration = Calibration.from_dict(self.settings, state["calibration"])
        self.progress = Progress(**state["progress"])
        for walker in self.walkers:
            walker.restore_state(state["walkers"][walker.spec.name])
        self.resumed_from = {w.spec.name: w.step for w in self.walkers}
        log.info(
            "%s: resumed from the checkpoint of round %d at steps %s",
            self.name,
            self.progress.round,
            self.resumed_from,
        )

    # --- the stages ---------------------------------------------------------------------------

    @property
    def calling(self) -> bool:
        """Whether the loop still calls the oracle (the stopping rule has not fired)."""
        return self.policy.may_call(self.progress.stopped_calling is not None, self._calls())

    def _calls(self) -> int:
        return self.labeller.calls()

    def initial_labels(self) -> list[Label]:
        """Label rattled copies of the start before the first fit (when nothing is labelled)."""
        if self.ledger.evaluations(self.id) or self.settings.initial_frames == 0:
            return []
        rng = np.random.default_rng(12345)
        pauses = []
        for k in range(self.settings.initial_frames):
            atoms = self.start.copy()
            amplitude = self.settings.initial_rattle_a * (k + 1) / self.settings.initial_frames
            atoms.positions += rng.normal(0.0, amplitude, atoms.positions.shape)
            pauses.append(Pause("initial", k, "uncertain", atoms))
        return self.label(pauses)

    def advance(self, walker: Walker) -> Pause:
        """Run ``walker`` until the call policy wants a frame labelled, it finishes, or it is lost."""
        name = walker.spec.name
        while not walker.finished:
            tripped = walker.advance()
            if tripped is not None:
                if walker.lost:
                    message = f"walker {name} lost after {walker.rollbacks_in_a_row} rollbacks in a row"
                    log.error(message)
                    return Pause(name, walker.step, "lost", message=message)
                walker.unsettled.append(Step(None, quiet=False))
                there = tripped.results.get("committee")
                if self.calling and there is not None:  # the committee was wrong there: learn it
                    walker.called(tripped.step)
                    return Pause(name, tripped.step, "uncertain", tripped.atoms, there)
                continue
            prediction: CommitteePrediction = walker.atoms.calc.results["committee"]
            walker.consider(prediction, self.settings.min_steps_between_calls)
            with self._lock:
                self.progress.md_steps += 1
            # The threshold and burn-in change only between rounds: nothing here depends on
            # how the walkers' threads interleave.
            verdict = self.policy.judge(
                walker.step,
                prediction.uncertainty,
                walker.step - walker.last_call,
                self.calibration.threshold,
                self.calibration.burning_in,
                walker.spec.ramping(walker.step),
            )
            walker.weighted_steps += verdict.weight
            # The frame an audit labels, if one is due (None while every frame is too near the last label)
            audited = walker.least_sure if self.policy.audit_due(walker.weighted_steps) else None
            walker.unsettled.append(verdict.step)
            if verdict.doubt and self.calling:
                walker.called()
                return Pause(name, walker.step, "uncertain", walker.atoms.copy(), prediction)
            if audited is not None and self.calling:
                walker.called(audited.step)
                return audited
        last_stretch = walker.least_sure  # weighted_steps stays 0 when labelling every k-th step
        if (
            last_stretch is not None and self.policy.closing_audit_due(walker.weighted_steps) and self.calling
        ):  # the closing audit: see loop.otf.policy
            walker.called(last_stretch.step)
            return last_stretch
        return Pause(name, walker.step, "finished")

    def label(self, pauses: Sequence[Pause]) -> list[Label]:
        """Label the paused frames with the oracle; every outcome goes to the ledger at once.

        Frames the ledger already holds (labelled before a restart) are reused, not sent again;
        failures are recorded and skipped. Frames beyond ``max_oracle_calls`` (walkers that
        paused together near the limit) are not labelled: the budget is a hard cap. What the
        new calls measured goes to the calibration and the stopping rule.
        """
        labels = self.labeller.label(pauses, self.oracle, self.policy.budget_left(self._calls()))
        for label in labels:
            if label.error is not None and not label.reused and label.walker != "initial":
                self.calibration.observe_call(label.uncertainty, label.error, label.force_z)
                self.progress.calls_within_tolerance = self.policy.within_tolerance_run(
                    self.progress.calls_within_tolerance, label.error
                )
        return labels

    def retrain(self, from_scratch: bool = False) -> int:
        """Warm-start the committee on every labelled frame (from scratch the first time or when asked)."""
        frames = self.frames()
        self.committee.fit(frames, from_scratch=from_scratch)
        self.progress.retrains += 1
        for walker in self.walkers:
            walker.refresh()
        return len(frames)

    @property
    def final_fit_due(self) -> bool:
        """Whether the committee should now be refitted from scratch (``final_fit``): the loop
        has stopped calling or every walker has finished, and frames came in since the last such fit."""
        if not self.settings.final_fit or (self.calling and not all(w.finished for w in self.walkers)):
            return False
        done = self.ledger.status_counts(self.id).get("done", 0)
        return done > 0 and self.progress.final_fit_frames != done

    def checkpoint(self) -> Path:
        """Write MD states, the committee and the calibration; atomic (``state.json`` last)."""
        folder = self.workdir / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)
        committee_file = f"committee-{self.progress.round}.pt"
        self.committee.save(folder / committee_file)
        state = {
            "committee": committee_file,
            "calibration": self.calibration.as_dict(),
            "progress": asdict(self.progress),
            "walkers": {w.spec.name: w.state() for w in self.walkers},
        }
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(folder / "state.json")
        for old in folder.glob("committee-*.pt"):
            if old.name != committee_file:
                old.unlink()
        return folder / "state.json"

    def settle(self) -> None:
        """Fold the walkers' new steps into the calibration window and the quiet count, walker
        by walker in their fixed order. Walkers step in threads: folding steps as they came
        made the threshold and the stopping rule, and so the run, depend on thread timing."""
        for walker in self.walkers:
            for step in walker.unsettled:
                if step.uncertainty is not None:
                    self.calibration.observe_step(step.uncertainty)
                self.progress.quiet_steps = self.policy.quiet_run(self.progress.quiet_steps, step)
            walker.unsettled.clear()

    def check_stopping(self) -> str | None:
        """Fire the stopping rule if it holds; returns its reason once it has fired."""
        p = self.progress
        if p.stopped_calling is None:
            ramping = any(w.spec.ramping(w.step) for w in self.walkers if not w.finished)
            reason = self.policy.stop_reason(
                p.calls_within_tolerance, p.quiet_steps, self.calibration.threshold, ramping
            )
            if reason is not None:
                p.stopped_calling, p.stopped_calling_at_step = reason, p.md_steps
                log.info("%s: stopped calling the oracle: %s", self.name, reason)
        return p.stopped_calling

    # --- composing the stages -----------------------------------------------------------------

    def close_round(self, labels: Sequence[Label], started: float) -> RoundReport:
        """Retrain if anything new was labelled, recalibrate, apply the stopping rule, checkpoint.

        Args:
            labels: The round's labels.
            started: ``time.perf_counter()`` when the round began.
        """
        new = [label for label in labels if label.failure is None]
        self.settle()
        self.calibration.update()
        self.check_stopping()
        if self.final_fit_due:
            size = self.retrain(from_scratch=True)
            self.progress.final_fit_frames = size
            log.info("%s: final fit, from scratch on %d frames", self.name, size)
        elif new or not self.committee.fitted:
            size = self.retrain()
        else:
            size = len(self.frames())
        self.progress.round += 1
        self.checkpoint()
        maes = [label.mae for label in labels if label.mae is not None]
        report = RoundReport(
            self.progress.round,
            list(labels),
            self.calibration.threshold,
            size,
            self._calls(),
            self.progress.md_steps,
            float(np.mean(maes)) if maes else None,
            time.perf_counter() - started,
        )
        if self.on_round is not None:
            self.on_round(report)
        return report

    def run(self) -> OTFReport:
        """Walk, label and retrain until every walker has finished."""
        if not self.committee.fitted:
            started = time.perf_counter()
            self.close_round(self.initial_labels(), started)
        with ThreadPoolExecutor(max_workers=len(self.walkers), thread_name_prefix="walker") as pool:
            while True:
                active = [w for w in self.walkers if not w.finished]
                if not active:
                    break
                started = time.perf_counter()
                pauses = list(pool.map(self.advance, active))
                labels = self.label([p for p in pauses if p.kind == "uncertain"])
                self.close_round(labels, started)
        return self.report()

    def report(self) -> OTFReport:
        counts = self.ledger.status_counts(self.id)
        return OTFReport(
            name=self.name,
            md_steps=self.progress.md_steps,
            oracle_calls=counts.get("done", 0) + counts.get("failed", 0),
            failed_calls=counts.get("failed", 0),
            dataset_size=counts.get("done", 0),
            threshold=self.calibration.threshold,
            rounds=self.progress.round,
            retrains=self.progress.retrains,
            rollbacks=sum(w.rollbacks for w in self.walkers),
            stopped_calling=self.progress.stopped_calling,
            stopped_calling_at_step=self.progress.stopped_calling_at_step,
            final_fit_frames=self.progress.final_fit_frames,
            resumed_from_steps=self.resumed_from,
            lost_walkers=[w.spec.name for w in self.walkers if w.lost],
            seconds=time.perf_counter() - self._started,
            force_coverage=force_coverage(
                self.calibration.ratios, self.settings.min_calibration_calls, self.calibration.force_z
            ),
        )
