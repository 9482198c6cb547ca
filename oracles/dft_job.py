"""One DFT job, as it runs in its own child process: read input → execute → write output.

The oracle writes ``job.json`` into the job's folder and starts :func:`run_job` in a child
process; the child builds the structure and the calculator, runs a single point or a
relaxation, and writes ``result.json`` (and ``relax.traj``, the trajectory). Whatever
happens is classified in ``result.json["status"]``:

* ``ok`` — energy, forces, stress and the final structure;
* ``setup_error`` — the calculator cannot be built (missing code, bad keyword arguments);
* ``scf_not_converged`` — the calculator's self-consistency failed (``SCFError``,
  ``CalculationFailed``, GPAW's ``KohnShamConvergenceError``...);
* ``relaxation_not_converged`` — the optimizer ran out of ``steps`` before ``fmax``;
* ``exploded`` — atoms came closer than ``min_distance_a`` or the energy is not finite;
* ``calculator_error`` — anything else the calculator raised, with a traceback summary.

:func:`execute` is the same work in the calling process (no folder, no time limit), for
exhaustive reference runs.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms

from loop.frame import structure_as_dict, structure_from_dict
from oracles.calculators import CalculatorSpec, make_calculator, settings_key
from oracles.errors import OracleSetupError

Mode = Literal["single_point", "relax"]
STATUSES = (
    "ok",
    "setup_error",
    "scf_not_converged",
    "relaxation_not_converged",
    "exploded",
    "calculator_error",
)


@dataclass(frozen=True)
class JobSettings:
    """How to evaluate a structure.

    Args:
        calculator: The calculator to use.
        mode: ``"single_point"`` or ``"relax"``.
        relax_cell: Relax the cell too (``FrechetCellFilter``), not only positions.
        optimizer: Name of an ASE optimizer (``BFGS``, ``FIRE``, ``LBFGS``...).
        fmax_ev_per_a: Force convergence criterion (eV/Å).
        steps: Most optimizer steps.
        min_distance_a: Atoms closer than this (Å) mean an exploded geometry.
    """

    calculator: CalculatorSpec = field(default_factory=CalculatorSpec)
    mode: Mode = "relax"
    relax_cell: bool = True
    optimizer: str = "BFGS"
    fmax_ev_per_a: float = 0.05
    steps: int = 200
    min_distance_a: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        return {
            "calculator": self.calculator.as_dict(),
            "mode": self.mode,
            "relax_cell": self.relax_cell,
            "optimizer": self.optimizer,
            "fmax_ev_per_a": self.fmax_ev_per_a,
            "steps": self.steps,
            "min_distance_a": self.min_distance_a,
        }

    @property
    def key(self) -> str:
        """A short hash of every setting; elemental references are cached under it, since a
        single point and a relaxation of the same crystal give different energies."""
        return settings_key(self.as_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSettings:
        body = dict(d)
        body["calculator"] = CalculatorSpec.from_dict(body["calculator"])
        return cls(**body)


def min_distance(atoms: Atoms) -> tuple[float, int, int]:
    """The shortest interatomic distance (Å, periodic images included) and its two atoms."""
    from ase.neighborlist import neighbor_list

    cutoff = 3.0
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        return math.inf, -1, -1
    k = int(np.argmin(d))
    return float(d[k]), int(i[k]), int(j[k])


def execute(atoms: Atoms, settings: JobSettings, directory: str | Path = ".") -> dict[str, Any]:
    """Evaluate ``atoms``; returns the outcome dict that :func:`run_job` writes.

    The outcome has ``status`` (one of :data:`STATUSES`), ``message``, and for ``ok``:
    ``energy`` (eV), ``forces`` (n x 3, eV/Å), ``stress`` (Voigt 6, eV/Å³, or ``None``),
    ``atoms`` (the final structure), ``n_steps``, ``converged``, ``trajectory`` (path or ``None``).
    """
    directory = Path(directory)
    try:
        calculator = make_calculator(settings.calculator, directory)
    except OracleSetupError as exc:
        return {"status": "setup_error", "message": str(exc)}
    atoms = atoms.copy()
    atoms.calc = calculator
    n_steps, converged, trajectory = 0, True, None
    try:
        if settings.mode == "relax":
            n_steps, converged, trajectory = _relax(atoms, settings, directory)
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()
        stress = _stress(atoms)
    except Exception as exc:  # classified below; the child must always write an outcome
        return _classify(exc)
    distance, i, j = min_distance(atoms)
    if not math.isfinite(energy) or not np.isfinite(forces).all():
        return {"status": "exploded", "message": f"energy {energy} or forces are not finite"}
    if distance < settings.min_distance_a:
        return {
            "status": "exploded",
            "message": f"atoms {i} and {j} are {distance:.3f} Å apart after the calculation, "
            f"closer than min_distance_a = {settings.min_distance_a} Å",
        }
    outcome = {
        "status": "ok",
        "message": "",
        "energy": energy,
        "forces": forces.tolist(),
        "stress": stress,
        "atoms": structure_as_dict(atoms),
        "n_steps": n_steps,
        "converged": converged,
        "trajectory": trajectory,
    }
    if not converged:
        outcome["status"] = "relaxation_not_converged"
        outcome["message"] = (
            f"relaxation did not reach fmax {settings.fmax_ev_per_a} eV/Å in {settings.steps} steps"
        )
    return outcome


def run_job(directory: str) -> None:
    """Child-process entry point: read ``job.json``, execute, write ``result.json``."""
    os.setpgrp()  # the oracle kills the whole group (with any code this job started) on timeout
    os.chdir(directory)
    _single_threaded_blas()
    start = time.perf_counter()
    try:
        job = json.loads(Path("job.json").read_text())
        settings = JobSettings.from_dict(job["settings"])
        outcome = execute(structure_from_dict(job["atoms"]), settings, directory)
    except Exception as exc:
        outcome = _classify(exc)
    outcome["wall_s"] = time.perf_counter() - start
    tmp = Path("result.json.tmp")
    tmp.write_text(json.dumps(outcome))
    tmp.replace("result.json")


def _single_threaded_blas() -> None:
    """Small matrices (cell filters) run far faster on one BLAS thread than on a busy pool;
    a calculator that wants threads (GPAW) sets its own."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def _relax(atoms: Atoms, settings: JobSettings, directory: Path) -> tuple[int, bool, str]:
    trajectory = str(directory / "relax.traj")
    n_steps, converged = relax(
        atoms,
        settings.optimizer,
        settings.fmax_ev_per_a,
        settings.steps,
        settings.relax_cell,
        logfile=str(directory / "relax.log"),
        trajectory=trajectory,
    )
    return n_steps, converged, trajectory


def relax(
    atoms: Atoms,
    optimizer: str,
    fmax_ev_per_a: float,
    steps: int,
    relax_cell: bool,
    logfile: str | None = None,
    trajectory: str | None = None,
) -> tuple[int, bool]:
    """Relax ``atoms`` in place with their calculator and the ASE optimizer ``optimizer``
    (positions, and the cell through ``FrechetCellFilter`` when ``relax_cell``).

    Returns:
        The optimizer steps taken and whether the largest force fell below ``fmax_ev_per_a``
        (eV/Å) within ``steps``.

    Raises:
        OracleSetupError: ASE has no optimizer of that name.
    """
    import ase.optimize
    from ase.filters import FrechetCellFilter

    optimizer_cls = getattr(ase.optimize, optimizer, None)
    if optimizer_cls is None:
        raise OracleSetupError(f"ASE has no optimizer {optimizer!r}")
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    dynamics = optimizer_cls(target, logfile=logfile, trajectory=trajectory)
    converged = bool(dynamics.run(fmax=fmax_ev_per_a, steps=steps))
    dynamics.close() if hasattr(dynamics, "close") else None
    return int(dynamics.nsteps), converged


def _stress(atoms: Atoms) -> list[float] | None:
    from ase.calculators.calculator import PropertyNotImplementedError

    if not atoms.pbc.all():
        return None
    try:
        return [float(v) for v in atoms.get_stress(voigt=True)]
    except PropertyNotImplementedError:
        return None


def _classify(exc: BaseException) -> dict[str, Any]:
    from ase.calculators.calculator import CalculationFailed, CalculatorSetupError

    summary = "".join(traceback.format_exception(exc, limit=-4)).strip()
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, OracleSetupError | CalculatorSetupError | FileNotFoundError | ImportError):
        status = "setup_error"
    elif isinstance(exc, CalculationFailed) or any("Convergence" in n or n == "SCFError" for n in names):
        status = "scf_not_converged"
    else:
        status = "calculator_error"
    return {"status": status, "message": f"{type(exc).__name__}: {exc}", "traceback": summary}
