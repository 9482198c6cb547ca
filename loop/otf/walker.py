"""An MD walker on any ASE calculator, with physics guards and a per-step hook.

A walker runs ASE molecular dynamics with its own temperature ramp, thermostat and seed. After
every step its guards check the frame: atoms closer than ``min_distance_a`` or a temperature
above ``max_temperature_factor`` times the target roll it back to its last snapshot (with fresh
thermal velocities and a warning naming the atoms or the temperature); too many rollbacks in a
row lose the walker. Every step the guards let through goes to ``on_step`` (observers, such as
the on-the-fly benchmark's checks) and is the on-the-fly loop's to judge.

Besides its MD state the walker keeps its share of the call bookkeeping: when it last called
the oracle, its weighted steps since then and the frame it was least sure of
(:mod:`loop.otf.policy` says what they mean).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from loop.otf.policy import Step
from loop.otf.settings import OTFSettings, WalkerSpec
from surrogates.mlip import CommitteePrediction

log = logging.getLogger("alloop.otf")


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
class Tripped:
    """The frame that tripped a guard, as it was before the walker rolled back.

    Args:
        step: The step it tripped at.
        atoms: A copy of the frame.
        results: The calculator's results there (``"committee"``: the committee's prediction).
        reason: What the guard found.
    """

    step: int
    atoms: Atoms
    results: dict[str, Any]
    reason: str


@dataclass
class _Snapshot:
    step: int
    positions: np.ndarray
    momenta: np.ndarray
    cell: np.ndarray


class Walker:
    """One MD run on ``calculator``; see :class:`WalkerSpec` and the module docstring.

    Args:
        spec: The walker's protocol.
        atoms: The start (copied).
        calculator: Any ASE calculator (the committee's, or the oracle's own).
        settings: The guards' limits (``min_distance_a``, ``max_temperature_factor``,
            ``snapshot_every``, ``max_rollbacks``).
        on_step: Called with the walker after every step the guards let through.
    """

    def __init__(
        self,
        spec: WalkerSpec,
        atoms: Atoms,
        calculator: BaseCalculator,
        settings: OTFSettings | None = None,
        on_step: Callable[[Walker], None] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings or OTFSettings()
        self.on_step = on_step
        self.atoms = atoms.copy()
        self.atoms.calc = calculator
        self.step = 0
        self.rollbacks = 0
        self.rollbacks_in_a_row = 0
        self.lost = False
        self.last_call = 0  # the step at which this walker last called the oracle (or its start)
        self.last_labelled = 0  # the step of the frame that call labelled (an audit's is earlier)
        self.weighted_steps = 0.0  # steps since the last call, each counted as uncertainty / threshold
        self.least_sure: Pause | None = None  # the frame it was least sure of since its last call
        self.unsettled: list[Step] = []  # steps not yet folded into the run's counts (OTFRun.settle)
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
        """One MD step at the ramp's target temperature for the current step (no guards)."""
        self._set_temperature(self.spec.temperature_at(self.step))
        self.dynamics.run(1)
        self.step += 1

    def advance(self) -> Tripped | None:
        """One MD step under the guards.

        A step the guards let through is snapshotted when due and goes to ``on_step``; one that
        trips a guard rolls the walker back (possibly losing it).

        Returns:
            ``None``, or the frame that tripped a guard.
        """
        self.md_step()
        problem = self.guard()
        if problem is not None:
            calculator: Any = self.atoms.calc
            tripped = Tripped(self.step, self.atoms.copy(), dict(calculator.results), problem)
            self.roll_back(problem)
            return tripped
        if self.step % self.settings.snapshot_every == 0:
            self.snapshot = self._take_snapshot()
            self.rollbacks_in_a_row = 0
        if self.on_step is not None:
            self.on_step(self)
        return None

    def refresh(self) -> None:
        """Forget cached results (the calculator's model changed)."""
        self.atoms.calc.reset()

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

    def guard(self) -> str | None:
        """What is physically wrong with the current frame, or ``None``."""
        from oracles.dft_job import min_distance

        settings = self.settings
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

    def roll_back(self, reason: str) -> None:
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
        if self.rollbacks_in_a_row > self.settings.max_rollbacks:
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
