"""On-the-fly training: molecular dynamics on an MLIP committee that calls the oracle when unsure.

Walkers (each an ASE MD run with its own temperature ramp, thermostat and seed) move on the
committee's mean forces. After every step a walker compares the committee's uncertainty ``u``
(force spread, root mean square over atoms, eV/Å) with the current threshold; above it, the
walker pauses on that frame. A *round* then labels the paused frames with the oracle (their
ledger rows are committed as results arrive), retrains the committee warm, writes a checkpoint
and lets the walkers go on. The walkers of a round run concurrently and share one dataset.

**Calibration.** Each oracle call measures the true error ``e`` of the frame it labels (force
error, root mean square over atoms, of the committee *before* it learns the frame; see
:func:`~surrogates.mlip.force_error`). Besides the frames it doubts, a walker *audits*: it
labels the frame it was least sure of since its last call once its steps since then add up to
``audit_every``, each step counted as ``u / threshold`` (at most 1). The calibration then also
sees frames below the threshold (the one closest to it, where a miss is likeliest), and the
audits go where the committee is least sure: a walker near the threshold audits every
``audit_every`` steps, one far below it (a cold walker beside a hot one) rarely. Frames within
``min_steps_between_calls`` steps of the walker's last labelled frame are not audited: an audit
that labelled the end of one stretch would otherwise often label the start of the next. A
walker that finishes audits its last stretch too, if its weighted steps reach half of ``audit_every`` (the
audits it is worth, rounded): the end of a heating run, at the conditions the potential is
wanted for, would otherwise go unlabelled.

The ratios ``e / u`` say how far the spread understates the error. The miss rate of a threshold
``t`` — the share of steps whose error exceeds the tolerance without a call — is estimated
over the recent steps' uncertainties as ``mean(u_s <= t and P(e/u > tol/u_s))`` with ``P``
from the measured ratios; the threshold is the largest ``t`` whose estimate meets the target
miss rate, capped at ``tolerance / median(e / u)`` so that a frame whose spread predicts a
typical error above the tolerance is always labelled.

Until ``min_calibration_calls`` ratios are in, the threshold is the initial guess, and walkers
only audit, every ``audit_every`` steps (each counted fully). Labelling every frame above the
guess would spend the first calls on neighbours of the start: a guess below the committee's
early spread labelled a frame every ``min_steps_between_calls`` steps, so that 6 of 16 frames
came from the first 30 steps of a 2000-step run. The audits take the first ratios, and the
frames, from stretches of the trajectory instead. (Without audits, ``audit_every = 0``, the
guess decides until then.)

**Guards.** A walker whose atoms come closer than ``min_distance_a`` or whose temperature runs
above ``max_temperature_factor`` times its target is rolled back to its last snapshot, with a
warning naming the atoms or the temperature, and the frame that tripped the guard is labelled
(the committee was wrong there); too many rollbacks in a row stop the walker.

**Stopping rule.** The loop stops calling the oracle once the last ``stop_after_calls`` calls
all met the tolerance and no walker has been above the threshold for ``stop_quiet_steps``
steps; the walkers finish on the committee alone and the report says when that happened. The
committee is not declared good enough for conditions a walker has yet to reach: steps on a
temperature ramp do not count as quiet, and the rule waits while any walker is still on its
ramp (a heating run calls until it is hot, even beside a walker that went quiet long ago).

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
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from loop.candidate import Candidate
from loop.errors import ConfigError
from loop.ledger import EvaluationRecord, Ledger, Proposal
from oracles.base import Oracle, Result
from oracles.errors import EvaluationFailed
from surrogates.mlip import CommitteeCalculator, CommitteePrediction, Frame, MLIPCommittee, force_error

log = logging.getLogger("alloop.otf")

Thermostat = Literal["langevin", "bussi", "npt_berendsen"]


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalkerSpec:
    """One MD walker.

    Args:
        name: Unique name (in logs, the ledger and checkpoints).
        steps: MD steps to run.
        temperature_k: Start and end of a linear temperature ramp (K).
        seed: Seeds the initial velocities and the thermostat's noise.
        thermostat: ``langevin`` (NVT), ``bussi`` (NVT, stochastic velocity rescaling) or
            ``npt_berendsen`` (NPT).
        timestep_fs: MD time step (fs).
        friction_per_fs: Langevin friction (1/fs).
        taut_fs: Bussi / Berendsen thermostat time constant (fs).
        pressure_gpa: Berendsen NPT target pressure (GPa).
    """

    name: str
    steps: int
    temperature_k: tuple[float, float] = (300.0, 300.0)
    seed: int = 0
    thermostat: Thermostat = "langevin"
    timestep_fs: float = 5.0
    friction_per_fs: float = 0.02
    taut_fs: float = 100.0
    pressure_gpa: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if self.steps < 1:
            problems.append(f"steps = {self.steps} (must be >= 1)")
        if len(self.temperature_k) != 2 or not all(t > 0 and math.isfinite(t) for t in self.temperature_k):
            problems.append(f"temperature_k = {self.temperature_k} (two positive temperatures)")
        if self.thermostat not in ("langevin", "bussi", "npt_berendsen"):
            problems.append(f"thermostat = {self.thermostat!r} (langevin, bussi or npt_berendsen)")
        for key in ("timestep_fs", "friction_per_fs", "taut_fs"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{key} = {value} (must be > 0)")
        if problems:
            raise ConfigError(f"walker {self.name!r}: " + "; ".join(problems))

    def temperature_at(self, step: int) -> float:
        """Target temperature (K) at ``step`` of the ramp."""
        start, end = self.temperature_k
        return start + (end - start) * min(step / max(self.steps - 1, 1), 1.0)

    def ramping(self, step: int) -> bool:
        """Whether the walker is still on its way to new conditions at ``step``."""
        return self.temperature_k[0] != self.temperature_k[1] and step < self.steps - 1


@dataclass(frozen=True)
class OTFSettings:
    """How the loop decides to call the oracle, guards walkers and stops.

    Args:
        tolerance_ev_per_a: Largest acceptable force error of a frame (eV/Å, root mean square
            over atoms, :func:`~surrogates.mlip.force_error`).
        target_miss_rate: Share of steps allowed to exceed the tolerance without a call.
        initial_threshold_ev_per_a: The threshold when not calibrating (eV/Å); when calibrating,
            it holds until ``min_calibration_calls`` ratios are in, while walkers only audit.
        calibrate: Adjust the threshold online (else it stays at the initial value).
        threshold_bounds: The calibrated threshold stays within these (eV/Å).
        min_calibration_calls: Ratios needed before the threshold is calibrated.
        window_steps: Recent steps whose uncertainties the calibration weighs.
        label_every: Label every k-th step instead (a baseline; ignores the uncertainty).
        audit_every: A walker labels the frame it was least sure of since its last call once
            its steps since then, each counted as uncertainty / threshold (at most 1), add up
            to this (0: never). The calibration then also sees frames below the threshold, and
            audits go where the committee is least sure.
        initial_frames: Rattled copies of each walker's start labelled before the first fit.
        initial_rattle_a: Their largest random displacement (Å, standard deviation); the
            copies are rattled at evenly spaced amplitudes up to it, so the first fit sees
            displacements as large as the hottest walker will make.
        min_steps_between_calls: A walker labels at most one frame in this many steps (the
            next frames are nearly the same configuration; the retrained committee learns them).
        stop_after_calls: ``K`` of the stopping rule (0 never stops calling).
        stop_quiet_steps: ``M`` of the stopping rule (steps, summed over walkers).
        min_distance_a: Atoms closer than this trip the collision guard (Å).
        max_temperature_factor: A walker hotter than this times its target trips the guard.
        snapshot_every: Steps between the snapshots a guard rolls back to.
        max_rollbacks: Rollbacks in a row (without a snapshot in between) before a walker is lost.
        max_oracle_calls: Most oracle calls in all (``None``: no limit).
        final_fit: Refit the committee from scratch on every frame once the loop stops calling.
    """

    tolerance_ev_per_a: float = 0.2
    target_miss_rate: float = 0.02
    initial_threshold_ev_per_a: float = 0.03
    calibrate: bool = True
    threshold_bounds: tuple[float, float] = (0.005, 1.0)
    min_calibration_calls: int = 5
    window_steps: int = 2000
    label_every: int | None = None
    audit_every: float = 100.0
    initial_frames: int = 4
    initial_rattle_a: float = 0.05
    min_steps_between_calls: int = 10
    stop_after_calls: int = 5
    stop_quiet_steps: int = 500
    min_distance_a: float = 1.5
    max_temperature_factor: float = 3.0
    snapshot_every: int = 20
    max_rollbacks: int = 5
    max_oracle_calls: int | None = None
    final_fit: bool = True

    def __post_init__(self) -> None:
        problems = []
        for key in ("tolerance_ev_per_a", "initial_threshold_ev_per_a", "min_distance_a"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{key} = {value} (must be > 0)")
        if not 0 < self.target_miss_rate < 1:
            problems.append(f"target_miss_rate = {self.target_miss_rate} (must be in (0, 1))")
        low, high = self.threshold_bounds
        if not 0 < low <= high:
            problems.append(f"threshold_bounds = {self.threshold_bounds} (need 0 < low <= high)")
        if self.max_temperature_factor <= 1:
            problems.append(f"max_temperature_factor = {self.max_temperature_factor} (must be > 1)")
        for key in (
            "min_calibration_calls",
            "window_steps",
            "snapshot_every",
            "max_rollbacks",
            "min_steps_between_calls",
        ):
            if getattr(self, key) < 1:
                problems.append(f"{key} = {getattr(self, key)} (must be >= 1)")
        for key in ("initial_frames", "stop_after_calls", "stop_quiet_steps", "audit_every"):
            if getattr(self, key) < 0:
                problems.append(f"{key} = {getattr(self, key)} (must be >= 0)")
        if self.label_every is not None and self.label_every < 1:
            problems.append(f"label_every = {self.label_every} (must be >= 1)")
        if self.max_oracle_calls is not None and self.max_oracle_calls < 1:
            problems.append(f"max_oracle_calls = {self.max_oracle_calls} (must be >= 1)")
        if self.initial_rattle_a < 0:
            problems.append(f"initial_rattle_a = {self.initial_rattle_a} (must be >= 0)")
        if problems:
            raise ConfigError("on-the-fly settings: " + "; ".join(problems))


# --- calibration -------------------------------------------------------------------------------


@dataclass
class Calibration:
    """The threshold, from measured error/uncertainty ratios and recent uncertainties."""

    settings: OTFSettings
    threshold: float = 0.0
    ratios: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            self.threshold = self.settings.initial_threshold_ev_per_a
        self.recent = deque(self.recent, maxlen=self.settings.window_steps)

    @property
    def burning_in(self) -> bool:
        """Whether the threshold is still the initial guess of a calibrating run (too few ratios)."""
        return self.settings.calibrate and len(self.ratios) < self.settings.min_calibration_calls

    def observe_step(self, uncertainty: float) -> None:
        self.recent.append(uncertainty)

    def observe_call(self, uncertainty: float, error: float) -> None:
        """Record what one oracle call measured: the frame's uncertainty and true error."""
        self.errors.append(error)
        if uncertainty > 0:
            self.ratios.append(error / uncertainty)

    def estimated_miss_rate(self, threshold: float) -> float:
        """The share of recent steps expected to exceed the tolerance below ``threshold``."""
        if not self.recent or not self.ratios:
            return 0.0
        u = np.asarray(self.recent)
        ratios = np.sort(np.asarray(self.ratios))
        below = u[u <= threshold]
        if below.size == 0:
            return 0.0
        needed = self.settings.tolerance_ev_per_a / np.maximum(below, 1e-12)
        exceed = 1.0 - np.searchsorted(ratios, needed, side="right") / ratios.size
        return float(exceed.sum() / u.size)

    def update(self) -> float:
        """Re-derive the threshold (when calibrating and enough calls are in); returns it.

        The threshold is the largest ``t`` whose estimated miss rate meets the target, but no
        higher than ``tolerance / median(e / u)``: a frame whose spread predicts a typical
        error above the tolerance is always labelled, however rare such frames were so far.
        """
        s = self.settings
        if not s.calibrate or len(self.ratios) < s.min_calibration_calls or not self.recent:
            return self.threshold
        low, high = s.threshold_bounds
        high = min(high, s.tolerance_ev_per_a / max(float(np.median(self.ratios)), 1e-12))
        candidates = np.unique(np.clip(np.concatenate([np.asarray(self.recent), [high]]), low, high))
        best = low
        for t in candidates:  # the miss rate grows with t: keep the largest t within target
            if self.estimated_miss_rate(float(t)) <= s.target_miss_rate:
                best = float(t)
            else:
                break
        self.threshold = max(best, low)
        return self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "ratios": self.ratios,
            "errors": self.errors,
            "recent": list(self.recent),
        }

    @classmethod
    def from_dict(cls, settings: OTFSettings, values: Mapping[str, Any]) -> Calibration:
        return cls(
            settings,
            float(values["threshold"]),
            list(values["ratios"]),
            list(values["errors"]),
            deque(values["recent"]),
        )


# --- walkers -----------------------------------------------------------------------------------


@dataclass
class Pause:
    """Why a walker stopped advancing: an uncertain frame to label, or the end of its run."""

    walker: str
    step: int
    kind: Literal["uncertain", "finished", "lost"]
    atoms: Atoms | None = None
    prediction: CommitteePrediction | None = None
    message: str = ""

    @property
    def uncertainty(self) -> float:
        return self.prediction.uncertainty if self.prediction is not None else math.nan


@dataclass(frozen=True)
class _Step:
    """A walker's step as the calibration window and the stopping rule see it.

    Args:
        uncertainty: The committee's uncertainty there; ``None`` for a rollback.
        quiet: ``True`` counts towards the quiet steps, ``False`` resets them, ``None`` neither
            (a step on a temperature ramp, or labelling every k-th step).
    """

    uncertainty: float | None
    quiet: bool | None


@dataclass
class _Snapshot:
    step: int
    positions: np.ndarray
    momenta: np.ndarray
    cell: np.ndarray


class Walker:
    """One MD run on the committee; see :class:`WalkerSpec`."""

    def __init__(self, spec: WalkerSpec, atoms: Atoms, committee: MLIPCommittee) -> None:
        self.spec = spec
        self.atoms = atoms.copy()
        self.atoms.calc = CommitteeCalculator(committee)
        self.step = 0
        self.rollbacks = 0
        self.rollbacks_in_a_row = 0
        self.lost = False
        self.last_call = 0  # the step at which this walker last called the oracle (or its start)
        self.last_labelled = 0  # the step of the frame that call labelled (an audit's is earlier)
        self.weighted_steps = 0.0  # steps since the last call, each counted as uncertainty / threshold
        self.least_sure: Pause | None = None  # the frame it was least sure of since its last call
        self.unsettled: list[_Step] = []  # steps not yet folded into the run's counts (OTFRun.settle)
        self.rng = np.random.default_rng(spec.seed)
        thermalize_momenta(self.atoms, temperature_K=spec.temperature_at(0), rng=self.rng)
        Stationary(self.atoms)
        self.snapshot = self._take_snapshot()
        self.dynamics = self._dynamics()

    @property
    def finished(self) -> bool:
        return self.lost or self.step >= self.spec.steps

    def _dynamics(self) -> MolecularDynamics:
        spec = self.spec
        dt = spec.timestep_fs * units.fs
        temperature = spec.temperature_at(self.step)
        if spec.thermostat == "langevin":
            from ase.md.langevin import Langevin

            return Langevin(
                self.atoms,
                dt,
                temperature_K=temperature,
                friction=spec.friction_per_fs / units.fs,
                fixcm=False,
                rng=self.rng,
            )
        if spec.thermostat == "bussi":
            from ase.md.bussi import Bussi

            return Bussi(
                self.atoms, dt, temperature_K=temperature, taut=spec.taut_fs * units.fs, rng=self.rng
            )
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(
            self.atoms,
            dt,
            temperature_K=temperature,
            pressure_au=spec.pressure_gpa * units.GPa,
            taut=spec.taut_fs * units.fs,
            taup=10 * spec.taut_fs * units.fs,
            compressibility_au=1.0 / (140.0 * units.GPa),
        )

    def _set_temperature(self, temperature: float) -> None:
        dynamics: Any = self.dynamics
        if self.spec.thermostat == "bussi":
            dynamics.temp = temperature * units.kB
            dynamics.target_kinetic_energy = 0.5 * dynamics.temp * dynamics.ndof
        else:
            dynamics.set_temperature(temperature_K=temperature)

    def _take_snapshot(self) -> _Snapshot:
        return _Snapshot(
            self.step, self.atoms.positions.copy(), self.atoms.get_momenta(), self.atoms.cell.array.copy()
        )

    def _restore(self, snapshot: _Snapshot) -> None:
        self.atoms.set_cell(snapshot.cell)
        self.atoms.set_positions(snapshot.positions)
        self.atoms.set_momenta(snapshot.momenta)
        self.step = snapshot.step
        self.dynamics = self._dynamics()

    def md_step(self) -> None:
        """One MD step at the ramp's target temperature for the current step."""
        self._set_temperature(self.spec.temperature_at(self.step))
        self.dynamics.run(1)
        self.step += 1

    def refresh(self) -> None:
        """Forget cached forces (the committee changed)."""
        self.atoms.calc.reset()  # type: ignore[union-attr]

    def consider(self, prediction: CommitteePrediction, min_gap: int) -> None:
        """Keep the current frame if the committee is less sure of it than of any since the last call.

        Frames within ``min_gap`` steps of the last labelled frame are passed over: an audit
        that labelled the end of one stretch would otherwise pick its neighbour at the start
        of the next.
        """
        if abs(self.step - self.last_labelled) < min_gap:
            return
        if self.least_sure is None or prediction.uncertainty > self.least_sure.uncertainty:
            self.least_sure = Pause(self.spec.name, self.step, "uncertain", self.atoms.copy(), prediction)

    def called(self, labelled_step: int | None = None) -> None:
        """The oracle labels a frame of this walker (by default the current one): a new stretch begins."""
        self.last_call = self.step
        self.last_labelled = self.step if labelled_step is None else labelled_step
        self.weighted_steps = 0.0
        self.least_sure = None

    def guard(self, settings: OTFSettings) -> str | None:
        """What is physically wrong with the current frame, or ``None``."""
        from oracles.dft_job import min_distance

        distance, i, j = min_distance(self.atoms)
        if distance < settings.min_distance_a:
            return (
                f"atoms {i} and {j} collided: {distance:.2f} Å apart "
                f"(< min_distance_a = {settings.min_distance_a} Å)"
            )
        temperature = self.atoms.get_temperature()
        target = self.spec.temperature_at(self.step)
        if not math.isfinite(temperature) or temperature > settings.max_temperature_factor * target:
            return (
                f"temperature exploded: {temperature:.0f} K against a target of {target:.0f} K "
                f"(> {settings.max_temperature_factor:g}x)"
            )
        return None

    def roll_back(self, reason: str, settings: OTFSettings) -> None:
        """Return to the last snapshot, with fresh thermal velocities, and say so."""
        tripped = self.step
        self.rollbacks += 1
        self.rollbacks_in_a_row += 1
        self._restore(self.snapshot)
        thermalize_momenta(self.atoms, temperature_K=self.spec.temperature_at(self.step), rng=self.rng)
        Stationary(self.atoms)
        log.warning(
            "walker %s: %s at step %d; rolled back to step %d (rollback %d in a row)",
            self.spec.name,
            reason,
            tripped,
            self.step,
            self.rollbacks_in_a_row,
        )
        if self.rollbacks_in_a_row > settings.max_rollbacks:
            self.lost = True

    # --- checkpoints --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "positions": self.atoms.positions.tolist(),
            "momenta": self.atoms.get_momenta().tolist(),
            "cell": self.atoms.cell.array.tolist(),
            "rng": self.rng.bit_generator.state,
            "rollbacks": self.rollbacks,
            "rollbacks_in_a_row": self.rollbacks_in_a_row,
            "lost": self.lost,
            "last_call": self.last_call,
            "last_labelled": self.last_labelled,
            "weighted_steps": self.weighted_steps,
            "snapshot": {k: np.asarray(v).tolist() for k, v in asdict(self.snapshot).items()},
        }

    def restore_state(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.rollbacks = int(state["rollbacks"])
        self.rollbacks_in_a_row = int(state["rollbacks_in_a_row"])
        self.lost = bool(state["lost"])
        self.last_call = int(state["last_call"])
        self.last_labelled = int(state.get("last_labelled", self.last_call))
        self.weighted_steps = float(state.get("weighted_steps", 0.0))
        snapshot = state["snapshot"]
        self.snapshot = _Snapshot(
            int(snapshot["step"]),
            np.array(snapshot["positions"]),
            np.array(snapshot["momenta"]),
            np.array(snapshot["cell"]),
        )
        self._restore(
            _Snapshot(
                int(state["step"]),
                np.array(state["positions"]),
                np.array(state["momenta"]),
                np.array(state["cell"]),
            )
        )


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    """The outcome of one oracle call on a paused frame."""

    walker: str
    step: int
    candidate_id: str
    uncertainty: float
    error: float | None = None
    """Force error of the committee before it learnt the frame (eV/Å, RMS over atoms)."""
    mae: float | None = None
    """Mean absolute force-component error of the committee on the frame (eV/Å)."""
    failure: str | None = None
    reused: bool = False
    """Found in the ledger (labelled before a restart), not sent to the oracle again."""


@dataclass
class RoundReport:
    """What one round of walking, labelling and retraining did."""

    round: int
    labels: list[Label]
    threshold: float
    dataset_size: int
    oracle_calls: int
    md_steps: int
    validation_force_mae: float | None
    seconds: float


@dataclass
class OTFReport:
    """Where the run stands."""

    name: str
    md_steps: int
    oracle_calls: int
    failed_calls: int
    dataset_size: int
    threshold: float
    rounds: int
    retrains: int
    rollbacks: int
    stopped_calling: str | None
    stopped_calling_at_step: int | None
    final_fit_frames: int | None
    resumed_from_steps: dict[str, int] | None
    lost_walkers: list[str]
    seconds: float

    @property
    def oracle_step_fraction(self) -> float:
        return self.oracle_calls / self.md_steps if self.md_steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "oracle_step_fraction": self.oracle_step_fraction}


@dataclass
class _Progress:
    """Counters that survive a restart (part of the checkpoint)."""

    round: int = 0
    md_steps: int = 0
    retrains: int = 0
    calls_within_tolerance: int = 0
    quiet_steps: int = 0
    stopped_calling: str | None = None
    stopped_calling_at_step: int | None = None
    final_fit_frames: int | None = None


class OTFRun:
    """An on-the-fly training run; see the module docstring.

    Args:
        name: Campaign name in the ledger.
        start: The starting structure of every walker.
        walkers: The walkers.
        committee: The MLIP committee (fitted or not; a checkpoint overrides its weights).
        oracle: Labels frames; its results' metadata carry ``energy_ev``,
            ``forces_ev_per_a`` and optionally ``stress_ev_per_a3`` (the DFT runner's).
        ledger: Where every oracle call is recorded.
        workdir: Checkpoints go to ``<workdir>/checkpoint``.
        settings: Thresholds, guards and the stopping rule.
        config: The run's configuration, stored in the ledger (its identity).
        on_round: Called with each round's report (flows publish artifacts there).
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
        identity = dict(
            config or {"walkers": [asdict(w) for w in walkers], "settings": asdict(self.settings)}
        )
        digest = json.dumps(identity, sort_keys=True, default=str)
        self.id = ledger.open_campaign(name, identity, hashlib.sha256(digest.encode()).hexdigest()[:16], 0)
        self.run_id = ledger.start_run(self.id)
        self.calibration = Calibration(self.settings)
        self.progress = _Progress()
        self.walkers = [Walker(spec, start, committee) for spec in walkers]
        self.resumed_from: dict[str, int] | None = None
        self._lock = threading.Lock()  # walkers advance in threads; the step count is shared
        self._started = time.perf_counter()
        self._recover()

    # --- the dataset (the ledger's done evaluations) -----------------------------------------

    def frames(self) -> list[Frame]:
        """Every labelled frame, in the order it was labelled."""
        return [_frame(e) for e in self.ledger.evaluations(self.id, ["done"])]

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
        self.progress = _Progress(**state["progress"])
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
        if self.progress.stopped_calling is not None:
            return False
        limit = self.settings.max_oracle_calls
        return limit is None or self._calls() < limit

    def _calls(self) -> int:
        return sum(self.ledger.status_counts(self.id).get(s, 0) for s in ("done", "failed"))

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
        """Run ``walker`` until its committee is unsure, it finishes, or it is lost."""
        s = self.settings
        while not walker.finished:
            walker.md_step()
            problem = walker.guard(s)
            if problem is not None:
                tripped, tripped_at = walker.atoms.copy(), walker.step
                prediction_there = walker.atoms.calc.results.get("committee")  # type: ignore[union-attr]
                walker.roll_back(problem, s)
                if walker.lost:
                    message = (
                        f"walker {walker.spec.name} lost after {walker.rollbacks_in_a_row} rollbacks in a row"
                    )
                    log.error(message)
                    return Pause(walker.spec.name, walker.step, "lost", message=message)
                walker.unsettled.append(_Step(None, quiet=False))
                if self.calling and prediction_there is not None:  # the committee was wrong there: learn it
                    walker.called(tripped_at)
                    return Pause(walker.spec.name, tripped_at, "uncertain", tripped, prediction_there)
                continue
            prediction: CommitteePrediction = walker.atoms.calc.results["committee"]  # type: ignore[union-attr]
            u = prediction.uncertainty
            if walker.step % s.snapshot_every == 0:
                walker.snapshot = walker._take_snapshot()
                walker.rollbacks_in_a_row = 0
            walker.consider(prediction, s.min_steps_between_calls)
            since_call = walker.step - walker.last_call
            with self._lock:
                self.progress.md_steps += 1
            # The threshold and burn-in change only between rounds: nothing here depends on
            # how the walkers' threads interleave.
            audited: Pause | None = None  # the frame an audit labels, if one is due
            if s.label_every is not None:
                doubt, quiet = walker.step % s.label_every == 0, None
            else:
                above = u > self.calibration.threshold
                quiet = False if above else None if walker.spec.ramping(walker.step) else True
                if s.audit_every > 0 and self.calibration.burning_in:  # audits only: see the docstring
                    doubt, walker.weighted_steps = False, walker.weighted_steps + 1.0
                else:
                    doubt = above and since_call >= s.min_steps_between_calls
                    walker.weighted_steps += min(u / self.calibration.threshold, 1.0)
                if s.audit_every > 0 and walker.weighted_steps >= s.audit_every:
                    audited = walker.least_sure  # None while every frame is too near the last label
            walker.unsettled.append(_Step(u, quiet))
            if doubt and self.calling:
                walker.called()
                return Pause(walker.spec.name, walker.step, "uncertain", walker.atoms.copy(), prediction)
            if audited is not None and self.calling:
                walker.called(audited.step)
                return audited
        last_stretch = walker.least_sure  # weighted_steps stays 0 when labelling every k-th step
        if (
            last_stretch is not None
            and s.audit_every > 0
            and walker.weighted_steps >= s.audit_every / 2
            and self.calling
        ):  # the closing audit: see the docstring
            walker.called(last_stretch.step)
            return last_stretch
        return Pause(walker.spec.name, walker.step, "finished")

    def label(self, pauses: Sequence[Pause]) -> list[Label]:
        """Label the paused frames with the oracle; every outcome goes to the ledger at once.

        Frames the ledger already holds (labelled before a restart) are reused, not sent again;
        failures are recorded and skipped. Frames beyond ``max_oracle_calls`` (walkers that
        paused together near the limit) are not labelled: the budget is a hard cap.
        """
        from pymatgen.io.ase import AseAtomsAdaptor

        from loop.structures import structure_to_params

        if not pauses:
            return []
        cycle = self.ledger.open_cycle(self.id, self.run_id)
        known = {e.candidate_id: e for e in self.ledger.evaluations(self.id)}
        candidates, fresh = [], []
        labels: dict[str, Label] = {}
        for pause in pauses:
            assert pause.atoms is not None
            params = {
                **structure_to_params(AseAtomsAdaptor.get_structure(pause.atoms), prototype="otf"),
                "walker": pause.walker,
                "step": pause.step,
            }
            candidate = Candidate(params)
            candidates.append((pause, candidate))
            if candidate.id in known:
                labels[candidate.id] = self._label_from(pause, candidate.id, known[candidate.id], reused=True)
            else:
                fresh.append(candidate)
        if self.settings.max_oracle_calls is not None:
            over = {c.id for c in fresh[max(self.settings.max_oracle_calls - self._calls(), 0) :]}
            fresh = [c for c in fresh if c.id not in over]
            candidates = [(p, c) for p, c in candidates if c.id not in over]
        if fresh:
            ids = self.ledger.propose(self.id, self.run_id, cycle, [Proposal(c) for c in fresh], "otf", None)
            evaluation_of = {c.id: i for c, i in zip(fresh, ids, strict=True)}

            def started(candidate: Candidate) -> None:
                self.ledger.mark_submitted(evaluation_of[candidate.id])

            futures: list[Future[Result]] = self.oracle.submit(fresh, on_start=started)
            by_id = {p_c[1].id: p_c[0] for p_c in candidates}
            for candidate, future in zip(fresh, futures, strict=True):
                labels[candidate.id] = self._record(
                    by_id[candidate.id], candidate, evaluation_of[candidate.id], future
                )
        self.ledger.close_cycle(self.id, cycle)
        result = [labels[c.id] for _, c in candidates]
        for label in result:
            if label.error is not None and not label.reused and label.walker != "initial":
                self.calibration.observe_call(label.uncertainty, label.error)
                within = label.error <= self.settings.tolerance_ev_per_a
                self.progress.calls_within_tolerance = (
                    self.progress.calls_within_tolerance + 1 if within else 0
                )
        return result

    def _record(
        self, pause: Pause, candidate: Candidate, evaluation_id: int, future: Future[Result]
    ) -> Label:
        try:
            result = future.result()
            frame = _frame_from_result(result)
        except (EvaluationFailed, ValueError, KeyError) as exc:
            retryable = bool(getattr(exc, "retryable", False))
            self.ledger.record_failure(evaluation_id, f"{type(exc).__name__}: {exc}", retryable)
            log.warning(
                "%s: labelling %s step %d failed and is skipped: %s", self.name, pause.walker, pause.step, exc
            )
            return Label(pause.walker, pause.step, candidate.id, pause.uncertainty, failure=str(exc))
        self.ledger.record_result(evaluation_id, result, self.run_id)
        return self._compare(pause, candidate.id, frame)

    def _label_from(self, pause: Pause, candidate_id: str, record: EvaluationRecord, reused: bool) -> Label:
        if record.status != "done":
            return Label(
                pause.walker, pause.step, candidate_id, pause.uncertainty, failure=record.error, reused=reused
            )
        return self._compare(pause, candidate_id, _frame(record), reused)

    def _compare(self, pause: Pause, candidate_id: str, frame: Frame, reused: bool = False) -> Label:
        if pause.prediction is None:
            return Label(pause.walker, pause.step, candidate_id, pause.uncertainty, reused=reused)
        difference = pause.prediction.forces.mean(axis=0) - frame.forces
        return Label(
            pause.walker,
            pause.step,
            candidate_id,
            pause.uncertainty,
            error=force_error(pause.prediction.forces.mean(axis=0), frame.forces),
            mae=float(np.abs(difference).mean()),
            reused=reused,
        )

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
        p = self.progress
        for walker in self.walkers:
            for step in walker.unsettled:
                if step.uncertainty is not None:
                    self.calibration.observe_step(step.uncertainty)
                if step.quiet is False:
                    p.quiet_steps = 0
                elif step.quiet:
                    p.quiet_steps += 1
            walker.unsettled.clear()

    def check_stopping(self) -> str | None:
        """Fire the stopping rule if it holds; returns its reason once it has fired."""
        s, p = self.settings, self.progress
        if (
            p.stopped_calling is None
            and s.stop_after_calls
            and s.label_every is None
            and p.calls_within_tolerance >= s.stop_after_calls
            and p.quiet_steps >= s.stop_quiet_steps
            and not any(w.spec.ramping(w.step) for w in self.walkers if not w.finished)
        ):
            p.stopped_calling = (
                f"the last {p.calls_within_tolerance} oracle calls met the tolerance of "
                f"{s.tolerance_ev_per_a} eV/Å and no walker went above the threshold "
                f"({self.calibration.threshold:.3f} eV/Å) for {p.quiet_steps} steps"
            )
            p.stopped_calling_at_step = p.md_steps
            log.info("%s: stopped calling the oracle: %s", self.name, p.stopped_calling)
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
        )


# --- frames from oracle results ----------------------------------------------------------------


def _frame_from_metadata(candidate_id: str, metadata: Mapping[str, Any]) -> Frame:
    from oracles.dft_job import atoms_from_dict

    atoms = atoms_from_dict(metadata["structure"])
    stress = metadata.get("stress_ev_per_a3")
    return Frame.from_atoms(
        atoms,
        float(metadata["energy_ev"]),
        np.asarray(metadata["forces_ev_per_a"], dtype=float),
        None if stress is None else np.asarray(stress, dtype=float),
        id=candidate_id,
    )


def _frame_from_result(result: Result) -> Frame:
    """The labelled frame of an oracle result.

    Raises:
        ValueError: the result's metadata lacks the structure or its labels, or they are not finite.
    """
    try:
        return _frame_from_metadata(result.candidate_id, result.metadata)
    except KeyError as exc:
        raise ValueError(f"oracle result for {result.candidate_id} lacks {exc} in its metadata") from None


def _frame(record: EvaluationRecord) -> Frame:
    return _frame_from_metadata(record.candidate_id, record.metadata)
