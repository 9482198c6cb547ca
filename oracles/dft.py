"""The DFT runner: an oracle that labels crystal structures with an ASE calculator.

Each evaluation is one job in its own folder under the runner's ``workdir``
(``<workdir>/<candidate id>``): the runner writes ``job.json``, a child process executes it
(:mod:`oracles.dft_job`: single point or relaxation) and writes ``result.json``, the runner
reads it back. The child is killed once it exceeds ``wall_time_s``, with every process it
started. Outcomes map onto :mod:`oracles.errors`:

* a missing code or bad calculator parameters → :class:`OracleSetupError` (never retried);
* SCF or relaxation not converged, exploded geometry, time-out → :class:`EvaluationFailed`
  (:class:`EvaluationTimeout`), retryable as configured (``retryable``);
* atoms closer than ``min_distance_a`` in the candidate itself → rejected before any
  calculation (not retryable);
* any other calculator exception → not retryable, with its traceback summary;
* a job killed from outside (a batch system's SIGTERM at the walltime, its forkserver lost) →
  ``interrupted``, retryable: the candidate is not at fault.

Results carry ``energy_per_atom`` and ``formation_energy_per_atom`` (eV/atom) against the
elements in their reference crystals, computed once with the same calculator and job settings
(a single point and a relaxation give different references) and cached in
``<workdir>/references-<settings>.json``.
With a :class:`~oracles.prerelax.PreRelaxation` (``prerelax = "chgnet"``), a universal
potential relaxes the candidate first and DFT starts from its structure; the metadata's
``prerelax`` records its steps and wall time beside the DFT job's ``n_steps`` and ``wall_s``. Their
``frame`` is the final structure with its energy (eV), forces (eV/Å) and stress (eV/Å³), which
:mod:`loop.extxyz` exports; the metadata holds provenance (steps, the job folder, settings).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loop.candidate import Candidate
from loop.errors import AlloopError, ConfigError, SpaceError, describe_validation_error
from loop.frame import Frame, structure_as_dict, structure_from_dict
from oracles.base import Measurement, Oracle, Result
from oracles.calculators import CalculatorSpec, check_available
from oracles.context import UniversalPotentials
from oracles.dft_job import JobSettings, min_distance
from oracles.errors import (
    EvaluationFailed,
    EvaluationInterrupted,
    EvaluationTimeout,
    InvalidResult,
    OracleSetupError,
)
from oracles.job_process import kill_group, killed_from_outside
from oracles.prerelax import PreRelaxation

FAILURES = ("scf_not_converged", "relaxation_not_converged", "exploded", "calculator_error", "timeout")

JOB_PRELOAD = ("oracles.dft_job", "ase.optimize", "ase.filters", "ase.calculators.emt", "threadpoolctl")
"""What every job imports, imported once in the fork server: an EMT job then starts in about
0.1 s instead of 0.6 s (``ase.optimize`` alone is 0.4 s). Codes that may start MPI at import
(GPAW) are left to the job."""


class DFTRunner(Oracle):
    """Evaluates crystal structures with an ASE calculator, one child process per job.

    Args:
        settings: Calculator, single point or relaxation, optimizer, ``fmax``, ``steps``.
        workdir: The run folder; each job gets ``<workdir>/<candidate id>``.
        wall_time_s: Wall-time limit of one job (s); the child is killed past it.
        retryable: Failure kinds (of :data:`FAILURES`) recorded as retryable.
        capacity: Jobs that may run at once.
        start_method: ``multiprocessing`` start method of the job processes.
        prerelaxation: Relaxes each candidate with a cheap potential before its DFT job.
    """

    implemented_properties = ("energy_per_atom", "formation_energy_per_atom")

    def __init__(
        self,
        settings: JobSettings | None = None,
        workdir: str | Path = "runs",
        wall_time_s: float = 600.0,
        retryable: tuple[str, ...] = ("scf_not_converged", "timeout"),
        capacity: int = 1,
        start_method: Literal["fork", "forkserver", "spawn"] = "forkserver",
        prerelaxation: PreRelaxation | None = None,
    ) -> None:
        unknown = sorted(set(retryable) - set(FAILURES))
        if unknown:
            raise OracleSetupError(
                f"retryable names unknown failure kind(s) {unknown}; known: {list(FAILURES)}"
            )
        if wall_time_s <= 0:
            raise OracleSetupError(f"wall_time_s must be positive, got {wall_time_s}")
        self.settings = settings or JobSettings()
        check_available(self.settings.calculator)
        self.workdir = Path(workdir)
        self.wall_time_s = float(wall_time_s)
        self.retryable = tuple(retryable)
        self.capacity = int(capacity)
        self.prerelaxation = prerelaxation
        self.start_method = start_method
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(list(JOB_PRELOAD))
        self._lock = threading.Lock()  # elemental references
        self._references: dict[str, float] = {}
        self._reference_file = self.workdir / f"references-{self.settings.key}.json"

    # --- the oracle contract ------------------------------------------------------------------

    def evaluate(self, candidate: Candidate) -> Result:
        """Relax (or single-point) the candidate's structure; see the module docstring."""
        atoms = candidate_atoms(candidate)
        self.check_geometry(atoms, candidate.id)
        references = self.references(sorted(set(atoms.get_chemical_symbols())))
        start, prerelax = atoms, None
        if self.prerelaxation is not None:
            start, prerelax = self.prerelaxation.relax(atoms)
        outcome, folder = self.run(start, candidate.id)
        final = structure_from_dict(outcome["atoms"])
        try:
            frame = Frame.from_atoms(
                final, outcome["energy"], outcome["forces"], outcome["stress"], id=candidate.id
            )
        except ValueError as exc:
            raise InvalidResult(f"job {candidate.id} (folder {folder}): {exc}") from None
        energy, n = frame.energy, len(atoms)
        formation = (energy - sum(references[s] for s in final.get_chemical_symbols())) / n
        metadata = {
            "formula": final.get_chemical_formula(mode="metal"),
            "initial_structure": structure_as_dict(atoms),
            "prerelax": prerelax,
            "n_steps": outcome["n_steps"],
            "workdir": str(folder),
            "trajectory": outcome.get("trajectory"),
            "wall_s": outcome.get("wall_s"),
            "calculator": self.settings.calculator.name,
            "settings": self.settings.as_dict()
            | {"prerelax": None if self.prerelaxation is None else self.prerelaxation.as_dict()},
            "references_ev_per_atom": {s: references[s] for s in sorted(set(final.get_chemical_symbols()))},
        }
        return Result(
            candidate.id,
            {
                "energy_per_atom": Measurement(energy / n, None, "eV/atom"),
                "formation_energy_per_atom": Measurement(formation, None, "eV/atom"),
            },
            metadata=metadata,
            frame=frame,
        )

    # --- pieces ---------------------------------------------------------------------------------

    def check_geometry(self, atoms: Atoms, label: str) -> None:
        """Reject a structure with overlapping atoms before any calculation.

        Raises:
            EvaluationFailed: two atoms are closer than ``min_distance_a`` (not retryable).
        """
        distance, i, j = min_distance(atoms)
        limit = self.settings.min_distance_a
        if distance < limit:
            symbols = atoms.get_chemical_symbols()
            raise EvaluationFailed(
                f"candidate {label} rejected before any calculation: overlapping atoms {i} ({symbols[i]}) "
                f"and {j} ({symbols[j]}) are {distance:.3f} Å apart, closer than min_distance_a = {limit} Å",
                retryable=False,
            )

    def references(self, elements: list[str]) -> dict[str, float]:
        """Energy per atom (eV) of each element in its reference crystal (ASE's ``bulk``),
        computed with the same settings once and cached on disk."""
        from ase.build import bulk

        with self._lock:
            if not self._references and self._reference_file.is_file():
                self._references = json.loads(self._reference_file.read_text())
            missing = [el for el in elements if el not in self._references]
            for el in missing:
                try:
                    atoms = bulk(el)
                except (ValueError, KeyError) as exc:
                    raise EvaluationFailed(
                        f"no reference crystal for element {el}: {exc}", retryable=False
                    ) from exc
                outcome, _ = self.run(atoms, f"reference-{el}-{self.settings.key}")
                self._references[el] = float(outcome["energy"]) / len(atoms)
            if missing:
                self._save_references()
            return {el: self._references[el] for el in elements}

    def _save_references(self) -> None:
        """Merge this runner's references into the cache file, atomically: other runners with
        the same settings (other fidelities' processes, workers) may read or write it too."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._reference_file.is_file():
            self._references = json.loads(self._reference_file.read_text()) | self._references
        partial = self._reference_file.with_name(f"{self._reference_file.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(self._references, indent=1))
        os.replace(partial, self._reference_file)

    def run(self, atoms: Atoms, name: str) -> tuple[dict[str, Any], Path]:
        """Run one job in a child process: write ``job.json``, execute, read ``result.json``.

        Returns:
            The successful outcome (see :func:`oracles.dft_job.execute`) and the job folder.

        Raises:
            OracleSetupError: the calculator cannot be set up.
            EvaluationTimeout: the job ran past ``wall_time_s`` and was killed.
            EvaluationFailed: the job failed (SCF, relaxation, exploded, calculator error).
        """
        folder = self._new_folder(name)
        job = {"atoms": structure_as_dict(atoms), "settings": self.settings.as_dict()}
        (folder / "job.json").write_text(json.dumps(job))
        from oracles.dft_job import run_job

        # typeshed's get_context answers BaseContext (no Process) for a union of start methods
        process = self._context.Process(target=run_job, args=(str(folder),), daemon=True)  # type: ignore[attr-defined]
        start = time.perf_counter()
        process.start()
        process.join(self.wall_time_s)
        if process.is_alive():
            kill_group(process)
            raise EvaluationTimeout(
                f"job {name} exceeded its wall-time limit of {self.wall_time_s:g} s and was killed "
                f"(folder {folder})",
                retryable="timeout" in self.retryable,
            )
        result_file = folder / "result.json"
        if not result_file.is_file():
            elapsed = f"after {time.perf_counter() - start:.1f} s without writing a result (folder {folder})"
            if killer := killed_from_outside(process.exitcode, self.start_method):
                raise EvaluationInterrupted(f"interrupted: job {name} {killer} {elapsed}")
            raise EvaluationFailed(
                f"job {name} died with exit code {process.exitcode} {elapsed}", retryable=False
            )
        outcome = json.loads(result_file.read_text())
        status = outcome["status"]
        if status == "ok":
            return outcome, folder
        message = f"{status}: {outcome.get('message', '')} (job {name}, folder {folder})"
        if outcome.get("traceback"):
            message += "\n" + outcome["traceback"]
        if status == "setup_error":
            raise OracleSetupError(message)
        raise EvaluationFailed(message, retryable=status in self.retryable)

    def _new_folder(self, name: str) -> Path:
        """A folder no other job uses: ``name``, else ``name-2``, ``name-3``... Creating it is
        the claim, so runners sharing the workdir (one per fidelity, or workers) never collide."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        base, attempt = self.workdir / name, 1
        while True:
            folder = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
            try:
                folder.mkdir()
            except FileExistsError:
                attempt += 1
                continue
            return folder


def candidate_atoms(candidate: Candidate) -> Atoms:
    """The ``Atoms`` a candidate describes (its ``structure`` parameter).

    Raises:
        EvaluationFailed: the candidate carries no valid structure (not retryable).
    """
    from loop.structure_codec import structure_from_params

    try:
        structure = structure_from_params(candidate.params)
    except SpaceError as exc:
        raise EvaluationFailed(f"candidate {candidate.id}: {exc}", retryable=False) from exc
    return structure.to_ase_atoms()


# --- configuration ----------------------------------------------------------------------------


class DFTOracleOptions(BaseModel):
    """``[oracle]`` options of ``type = "dft"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    calculator: str = "emt"
    """``"emt"``, ``"gpaw"`` or an import path ``"module:Class"``."""
    calculator_options: dict[str, Any] = {}
    """Keyword arguments of the calculator."""
    kpoint_density: float = Field(default=3.0, gt=0)
    ecut_ev: float = Field(default=350.0, gt=0)
    xc: str = "PBE"
    mode: Literal["single_point", "relax"] = "relax"
    relax_cell: bool = True
    optimizer: str = "BFGS"
    fmax: float = Field(default=0.05, gt=0)
    """Force criterion of relaxations (eV/Å)."""
    steps: int = Field(default=200, ge=1)
    min_distance_a: float = Field(default=0.5, ge=0)
    wall_time_s: float = Field(default=600.0, gt=0)
    retryable: list[Literal[FAILURES]] = ["scf_not_converged", "timeout"]  # type: ignore[valid-type]
    workdir: str = "runs"
    """The run folder, relative to the config file; jobs go to ``<workdir>/<campaign>/<id>``."""
    capacity: int = Field(default=1, ge=1)
    start_method: Literal["fork", "forkserver", "spawn"] = "forkserver"
    prerelax: str | None = None
    """A universal potential (``"chgnet"``, ``"mace-mp"``...) that relaxes each candidate
    before DFT; ``None``: DFT starts from the candidate."""
    prerelax_options: dict[str, Any] = {}
    """Keyword arguments of the potential's loader (``model = "small"`` for mace-mp, say)."""
    prerelax_device: Literal["cpu", "cuda"] = "cpu"
    prerelax_optimizer: str = "FIRE"
    prerelax_fmax: float = Field(default=0.1, gt=0)
    """Force criterion of the pre-relaxation (eV/Å)."""
    prerelax_steps: int = Field(default=300, ge=1, le=5000)


def oracle_from_config(options: Mapping[str, Any], context: Any) -> DFTRunner:
    """Builder for ``[oracle] type = "dft"``.

    Args:
        options: The section's options (:class:`DFTOracleOptions`).
        context: The campaign's name and path resolution (as
            :class:`~oracles.context.BuildContext`); for ``prerelax``, it must also load universal
            potentials (:class:`~oracles.context.UniversalPotentials`), as the campaign's does.

    Raises:
        ConfigError: an option is unknown or invalid, or the ``prerelax`` potential cannot be
            loaded (the message names ``oracle.<key>``).
    """
    import ase.optimize

    try:
        parsed = DFTOracleOptions.model_validate(dict(options))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "oracle")) from None
    for key in ("optimizer", "prerelax_optimizer"):
        if not isinstance(getattr(ase.optimize, getattr(parsed, key), None), type):
            raise ConfigError(f"oracle.{key}: ASE has no optimizer {getattr(parsed, key)!r}")
    spec = CalculatorSpec(
        parsed.calculator, parsed.calculator_options, parsed.kpoint_density, parsed.ecut_ev, parsed.xc
    )
    settings = JobSettings(
        spec,
        parsed.mode,
        parsed.relax_cell,
        parsed.optimizer,
        parsed.fmax,
        parsed.steps,
        parsed.min_distance_a,
    )
    prerelaxation = None if parsed.prerelax is None else _prerelaxation(parsed, context)
    workdir = context.resolve(parsed.workdir) / context.campaign.name
    try:
        return DFTRunner(
            settings,
            workdir,
            wall_time_s=parsed.wall_time_s,
            retryable=tuple(parsed.retryable),
            capacity=parsed.capacity,
            start_method=parsed.start_method,
            prerelaxation=prerelaxation,
        )
    except OracleSetupError as exc:
        raise ConfigError(f"oracle.calculator: {exc}") from exc


def _prerelaxation(parsed: DFTOracleOptions, context: object) -> PreRelaxation:
    """The pre-relaxation ``prerelax`` names, its potential loaded now so that a missing
    package or absent weights fail the build, not the first job."""
    name = str(parsed.prerelax)
    if parsed.mode != "relax":
        raise ConfigError(
            f"oracle.prerelax: {name!r} would change the structure a single point labels; use mode = 'relax'"
        )
    if not isinstance(context, UniversalPotentials):
        raise ConfigError(
            f"oracle.prerelax: no universal potentials were given to this builder to load {name!r}"
        )
    try:
        calculator = context.universal_calculator(name, parsed.prerelax_device, **parsed.prerelax_options)
    except (AlloopError, ImportError, OSError, TypeError) as exc:
        raise ConfigError(f"oracle.prerelax: {exc}") from None
    return PreRelaxation(
        calculator,
        name,
        parsed.prerelax_optimizer,
        parsed.prerelax_fmax,
        parsed.prerelax_steps,
        parsed.relax_cell,
        parsed.min_distance_a,
    )
