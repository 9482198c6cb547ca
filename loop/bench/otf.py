"""On-the-fly training against the oracle alone and two baselines (``alloop bench otf``).

One protocol (the walkers of an on-the-fly config: start, thermostat, ramp, seed), four variants:

* ``ground_truth`` (a): the walkers run on the oracle's calculator itself, every step an oracle
  evaluation. Every ``HELD_OUT_EVERY``-th frame, with its energy and forces, is held out to test the
  committees of the other variants; its radial distribution function (RDF) is the reference.
* ``calibrated`` (b): the config's run as it is (:func:`~loop.otf_config.build_otf_run`).
* ``fixed_threshold`` (c): the same with ``calibrate = False`` (the initial threshold holds)
  and, when (b) ran, its oracle budget: at most as many calls as (b) made.
* ``every_kth`` (d): label every k-th step (``label_every``), k chosen so that it makes at least
  as many oracle calls as (b), and as few as that allows.

Each committee variant runs in its own folder, with its own ledger, oracle and committee. Every
``CHECK_EVERY``-th MD step its frame goes to the oracle's calculator directly (outside the oracle,
not counted as a call): a *miss* is a checked step whose force error, measured as the loop measures
it against its tolerance (:func:`~surrogates.mlip.force_error`), exceeds the tolerance while the loop
did not call the oracle on it. At the end, the final committee's force
RMSE (all components) and energy MAE (per atom) are measured on (a)'s held-out frames, and the RDF
of its trajectory's second half is compared with (a)'s.

The RDF difference is ``sum |g - g_a| / sum g_a`` over bins of ``RDF_BIN_A`` up to ``RDF_MAX_A``
(every periodic image counts, so a small cell is fine); ``rdf_noise_floor`` is the same
difference between (a) and an oracle-only replica whose walkers use other seeds: what
thermal noise alone gives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from loop.errors import ConfigError
from loop.ledger import Ledger
from loop.otf import OTFReport, OTFRun, OTFSettings, Pause, RoundReport, Walker, WalkerSpec
from loop.otf_config import OTFConfig, build_otf_run, load_otf_config
from surrogates.mlip import Frame, MLIPCommittee, force_error

VARIANTS = ("ground_truth", "calibrated", "fixed_threshold", "every_kth")
"""The variants, in the order they run ((d) needs (b)'s calls)."""
CHECK_EVERY = 10
"""Committee variants: every this many MD steps, the frame is checked against the oracle's calculator."""
HELD_OUT_EVERY = 20
"""Ground truth: every this many MD steps, the frame is held out."""
RDF_MAX_A = 5.0
RDF_BIN_A = 0.05


# --- observing walkers -------------------------------------------------------------------------


class _ObservedWalker(Walker):
    """A walker that reports every accepted MD step (one the physics guards let through).

    :meth:`OTFRun.advance` calls :meth:`guard` once after every step, with ``step`` already
    advanced; the observer sees the frame there, before the loop decides whether to call the oracle.
    """

    def __init__(
        self, spec: WalkerSpec, atoms: Atoms, committee: MLIPCommittee, observe: Callable[[Walker], None]
    ) -> None:
        super().__init__(spec, atoms, committee)
        self.observe = observe

    def guard(self, settings: OTFSettings) -> str | None:
        problem = super().guard(settings)
        if problem is None:
            self.observe(self)
        return problem


@dataclass
class MissCheck:
    """One frame of a committee variant checked against the oracle's calculator.

    Args:
        walker: The walker's name.
        step: Its MD step.
        error_ev_per_a: Force error of the committee's mean forces, as the loop measures it against
            its tolerance (:func:`~surrogates.mlip.force_error`: RMS over atoms, eV/Å).
        uncertainty_ev_per_a: The committee's uncertainty on the frame (eV/Å).
        largest_error_ev_per_a: Largest per-atom force error (eV/Å).
        called: Whether the loop called the oracle on this step.
    """

    walker: str
    step: int
    error_ev_per_a: float
    uncertainty_ev_per_a: float
    largest_error_ev_per_a: float
    called: bool = False


@dataclass
class _Trajectory:
    """What a variant's walkers went through: frames for the RDF, held-out frames, checks."""

    calculator: Callable[[], BaseCalculator]
    tolerance_ev_per_a: float = math.inf
    check: bool = False
    hold_out: bool = False
    rdf_frames: list[Atoms] = field(default_factory=list)
    held_out: list[Frame] = field(default_factory=list)
    checks: list[MissCheck] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, walker: Walker) -> None:
        """Record ``walker``'s current frame (called by :class:`_ObservedWalker`; thread-safe)."""
        atoms, step = walker.atoms, walker.step
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        held_out = check = None
        if self.hold_out and step % HELD_OUT_EVERY == 0:
            held_out = Frame.from_atoms(frame, atoms.get_potential_energy(), atoms.get_forces())
        if self.check and step % CHECK_EVERY == 0:
            frame.calc = self.calculator()
            predicted, true = atoms.get_forces(), frame.get_forces()
            u = atoms.calc.results["committee"].uncertainty  # type: ignore[union-attr]
            largest = float(np.linalg.norm(predicted - true, axis=1).max())
            check = MissCheck(walker.spec.name, step, force_error(predicted, true), float(u), largest)
            frame.calc = None
        with self._lock:
            if step > walker.spec.steps // 2:
                self.rdf_frames.append(frame)
            if held_out is not None:
                self.held_out.append(held_out)
            if check is not None:
                self.checks.append(check)

    def mark_called(self, pause: Pause) -> None:
        """The loop paused ``pause``'s walker to call the oracle: its check there (if any) was no miss."""
        with self._lock:
            for check in reversed(self.checks):
                if check.walker == pause.walker:
                    check.called = check.called or check.step == pause.step
                    return

    @property
    def misses(self) -> int:
        return sum(c.error_ev_per_a > self.tolerance_ev_per_a and not c.called for c in self.checks)


# --- radial distribution -----------------------------------------------------------------------


def radial_distribution(
    frames: Sequence[Atoms], r_max_a: float = RDF_MAX_A, bin_a: float = RDF_BIN_A
) -> tuple[np.ndarray, np.ndarray]:
    """The radial distribution function averaged over ``frames``.

    Every pair within ``r_max_a``, periodic images included, is counted (ASE's neighbour list),
    so ``r_max_a`` may exceed half the cell.

    Args:
        frames: Structures of one system (same atom count; the cell may change).
        r_max_a: Largest distance (Å).
        bin_a: Bin width (Å).

    Returns:
        ``b`` bin centres (Å) and ``b`` values of g(r) (1 for an ideal gas).

    Raises:
        ValueError: no frames.
    """
    from ase.neighborlist import neighbor_list

    if not frames:
        raise ValueError("no frames to compute a radial distribution function from")
    edges = np.arange(0.0, r_max_a + 0.5 * bin_a, bin_a)
    shells = 4.0 / 3.0 * np.pi * np.diff(edges**3)
    g = np.zeros(edges.size - 1)
    for atoms in frames:
        n = len(atoms)
        distances = neighbor_list("d", atoms, r_max_a)  # ordered pairs: each pair twice
        g += np.histogram(distances, edges)[0] / (n * (n / atoms.get_volume()) * shells)
    return 0.5 * (edges[1:] + edges[:-1]), g / len(frames)


def rdf_difference(g: np.ndarray, reference: np.ndarray) -> float:
    """``sum |g - reference| / sum reference`` (0: identical; NaN when the reference is empty)."""
    total = float(np.sum(reference))
    return float(np.abs(g - reference).sum() / total) if total > 0 else math.nan


# --- the variants ------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """Variant (a): the walkers on the oracle's calculator.

    Args:
        held_out: Every ``HELD_OUT_EVERY``-th frame with the oracle's energy and forces.
        rdf: g(r) over the second half of the walkers' steps.
        md_steps: MD steps run (each one an oracle evaluation).
        wall_s: Wall time (s).
    """

    held_out: list[Frame]
    rdf: np.ndarray
    md_steps: int
    wall_s: float


def oracle_calculator(config: OTFConfig, directory: Path) -> Callable[[], BaseCalculator]:
    """A factory of the calculator the config's oracle labels frames with (EMT, GPAW...).

    Raises:
        ConfigError: the ``[oracle]`` options are invalid.
    """
    from pydantic import ValidationError

    from oracles.calculators import CalculatorSpec, make_calculator
    from oracles.dft import DFTOracleOptions

    try:
        options = DFTOracleOptions.model_validate(dict(config.oracle))
    except ValidationError as exc:
        raise ConfigError(f"oracle: {exc}") from None
    spec = CalculatorSpec(
        options.calculator, options.calculator_options, options.kpoint_density, options.ecut_ev, options.xc
    )
    directory.mkdir(parents=True, exist_ok=True)
    return lambda: make_calculator(spec, directory)


def run_ground_truth(config: OTFConfig, workdir: Path, seed_offset: int = 0) -> GroundTruth:
    """Run the config's walkers on the oracle's calculator (variant (a)).

    Args:
        config: The on-the-fly configuration.
        workdir: Where the calculator may write files.
        seed_offset: Added to every walker's seed (a replica for the RDF's noise floor).
    """
    calculator = oracle_calculator(config, workdir)
    trajectory = _Trajectory(calculator, hold_out=seed_offset == 0)
    start = config.start()
    placeholder = MLIPCommittee(sorted(set(start.get_chemical_symbols())), size=2)  # never fitted nor used
    settings, md_steps = config.otf, 0
    started = time.perf_counter()
    for spec in config.walkers:
        spec = dataclasses.replace(spec, seed=spec.seed + seed_offset)
        walker = _ObservedWalker(spec, start, placeholder, trajectory.observe)
        walker.atoms.calc = calculator()
        while not walker.finished:  # OTFRun.advance without the committee
            walker._set_temperature(spec.temperature_at(walker.step))
            walker.dynamics.run(1)
            walker.step += 1
            md_steps += 1
            problem = walker.guard(settings)
            if problem is not None:
                walker.roll_back(problem, settings)
    wall = time.perf_counter() - started
    return GroundTruth(trajectory.held_out, radial_distribution(trajectory.rdf_frames)[1], md_steps, wall)


def every_kth_interval(walkers: Sequence[WalkerSpec], calls: int) -> int:
    """The largest k whose every-k-th labelling makes at least ``calls`` calls over ``walkers``.

    Returns one more than the longest walker when ``calls <= 0`` (no call at all).
    """
    longest = max(w.steps for w in walkers)
    for k in range(longest + 1, 0, -1):
        if sum(w.steps // k for w in walkers) >= calls:
            return k
    return 1


def relocated(config: OTFConfig, folder: Path, otf: OTFSettings | None = None) -> OTFConfig:
    """``config`` with its ledger, run folder and oracle jobs under ``folder`` (and other settings)."""
    structure = config.structure
    if structure.file is not None:
        structure = dataclasses.replace(structure, file=str(config.resolve(structure.file)))
    return dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, ledger=str(folder / "otf.db"), workdir="runs"),
        structure=structure,
        otf=otf or config.otf,
        oracle={**config.oracle, "workdir": "runs"},
        base_dir=folder,
    )


def run_committee_variant(
    config: OTFConfig,
    folder: Path,
    truth: GroundTruth,
    on_round: Callable[[RoundReport], None] | None = None,
) -> dict[str, Any]:
    """Run one on-the-fly variant in ``folder`` and measure it against ``truth``.

    Besides its ledger and runs, ``folder`` gets ``rounds.csv`` (threshold and calls per round)
    and ``checks.csv`` (every checked step: error, uncertainty, whether the oracle was called).

    Args:
        config: The variant's configuration (:func:`relocated` moves it to ``folder``).
        folder: A fresh folder for its ledger, oracle jobs and checkpoints.
        truth: Variant (a), for the held-out frames and the reference RDF.
        on_round: Called with each round's :class:`~loop.otf.RoundReport`.

    Returns:
        The variant's numbers (see :func:`run_otf_benchmark`).
    """
    folder.mkdir(parents=True)
    config = relocated(config, folder)
    trajectory = _Trajectory(
        oracle_calculator(config, folder / "checks"), config.otf.tolerance_ev_per_a, check=True
    )
    rounds: list[str] = ["round,md_steps,oracle_calls,threshold_ev_per_a,dataset_size,seconds"]

    def round_done(r: RoundReport) -> None:
        rounds.append(
            f"{r.round},{r.md_steps},{r.oracle_calls},{r.threshold:.6g},{r.dataset_size},{r.seconds:.3f}"
        )
        if on_round is not None:
            on_round(r)

    started = time.perf_counter()
    with Ledger(config.run.ledger) as ledger:
        run = build_otf_run(config, ledger, on_round=round_done)
        try:
            run.walkers = [
                _ObservedWalker(w.spec, run.start, run.committee, trajectory.observe) for w in run.walkers
            ]
            report = _drive(run, trajectory)
            wall = time.perf_counter() - started
            force_rmse, energy_mae = held_out_errors(run.committee, truth.held_out)
        finally:
            run.committee.close()
            run.oracle.close()
    (folder / "rounds.csv").write_text("\n".join(rounds) + "\n")
    lines = ["walker,step,error_ev_per_a,uncertainty_ev_per_a,largest_atom_error_ev_per_a,called"]
    lines += [
        f"{c.walker},{c.step},{c.error_ev_per_a:.6g},{c.uncertainty_ev_per_a:.6g},"
        f"{c.largest_error_ev_per_a:.6g},{int(c.called)}"
        for c in trajectory.checks
    ]
    (folder / "checks.csv").write_text("\n".join(lines) + "\n")
    checks = len(trajectory.checks)
    return {
        "oracle_calls": report.oracle_calls,
        "oracle_step_fraction": report.oracle_step_fraction,
        "force_rmse_ev_per_a": force_rmse,
        "energy_mae_ev_per_atom": energy_mae,
        "miss_rate": trajectory.misses / checks if checks else None,
        "misses": trajectory.misses,
        "miss_checks": checks,
        "max_checked_error_ev_per_a": max((c.error_ev_per_a for c in trajectory.checks), default=None),
        "max_checked_atom_error_ev_per_a": max(
            (c.largest_error_ev_per_a for c in trajectory.checks), default=None
        ),
        "rdf_difference": rdf_difference(radial_distribution(trajectory.rdf_frames)[1], truth.rdf),
        "wall_s": wall,
        "md_steps": report.md_steps,
        "threshold": report.threshold if config.otf.label_every is None else None,
        "calibrate": config.otf.calibrate,
        "label_every": config.otf.label_every,
        "stopped_calling_at_step": report.stopped_calling_at_step,
        "failed_calls": report.failed_calls,
        "rollbacks": report.rollbacks,
        "lost_walkers": report.lost_walkers,
        "rounds": report.rounds,
    }


def _drive(run: OTFRun, trajectory: _Trajectory) -> OTFReport:
    """:meth:`OTFRun.run`, stage by stage, telling ``trajectory`` which steps called the oracle."""
    if not run.committee.fitted:
        run.close_round(run.initial_labels(), time.perf_counter())
    with ThreadPoolExecutor(max_workers=len(run.walkers), thread_name_prefix="walker") as pool:
        while active := [w for w in run.walkers if not w.finished]:
            started = time.perf_counter()
            pauses = list(pool.map(run.advance, active))
            uncertain = [p for p in pauses if p.kind == "uncertain"]
            for pause in uncertain:
                trajectory.mark_called(pause)
            run.close_round(run.label(uncertain), started)
    return run.report()


def held_out_errors(committee: MLIPCommittee, frames: Sequence[Frame]) -> tuple[float, float]:
    """The committee's mean-prediction errors on labelled frames.

    Returns:
        Force RMSE over every component (eV/Å) and energy MAE per atom (eV/atom).
    """
    force_errors, energy_errors = [], []
    for frame in frames:
        prediction = committee.predict(frame.atoms())
        force_errors.append((prediction.forces.mean(axis=0) - frame.forces).reshape(-1))
        energy_errors.append(abs(float(prediction.energy.mean()) - frame.energy) / len(frame.numbers))
    return float(np.sqrt(np.mean(np.concatenate(force_errors) ** 2))), float(np.mean(energy_errors))


# --- the benchmark -----------------------------------------------------------------------------


def acceptance(variants: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's acceptance criteria on the calibrated loop (``None``: a variant it needs is missing).

    ``beats_fixed_threshold`` / ``beats_every_kth``: a lower held-out force RMSE than that
    baseline with at most its oracle calls; ``beats_baselines``: both.
    """
    b = variants.get("calibrated")

    def beats(name: str) -> bool | None:
        other = variants.get(name)
        if b is None or other is None:
            return None
        return bool(
            b["force_rmse_ev_per_a"] < other["force_rmse_ev_per_a"]
            and b["oracle_calls"] <= other["oracle_calls"]
        )

    fixed, kth = beats("fixed_threshold"), beats("every_kth")
    return {
        "oracle_step_fraction_at_most_2pct": None if b is None else b["oracle_step_fraction"] <= 0.02,
        "force_rmse_at_most_0.1_ev_per_a": None if b is None else b["force_rmse_ev_per_a"] <= 0.1,
        "miss_rate_at_most_2pct": None if b is None or b["miss_rate"] is None else b["miss_rate"] <= 0.02,
        "beats_fixed_threshold": fixed,
        "beats_every_kth": kth,
        "beats_baselines": None if fixed is None or kth is None else fixed and kth,
    }


def run_otf_benchmark(
    config_path: str | Path,
    workdir: str | Path | None = None,
    steps: int | None = None,
    variants: Sequence[str] = VARIANTS,
    label_every: int | None = None,
    on_variant: Callable[[str, dict[str, Any]], None] | None = None,
    on_round: Callable[[str, RoundReport], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; see the module docstring.

    Args:
        config_path: An on-the-fly TOML file (``examples/otf_md/otf.toml``).
        workdir: Where each variant's folder goes (``<workdir>/<variant>``, which must not exist; its
            numbers are written to ``result.json`` there as it finishes); default: a temporary folder,
            removed at the end.
        steps: Override every walker's ``steps`` (a quick run).
        variants: Which of :data:`VARIANTS` to run; the ground truth always runs (the others are
            measured against it).
        label_every: k of ``every_kth`` (default: matched to ``calibrated``'s calls, which must then run).
        on_variant: Called with each variant's name and numbers as it finishes.
        on_round: Called with a variant's name and each of its rounds' reports.

    Returns:
        ``variants`` (one object per variant with ``oracle_calls``, ``oracle_step_fraction``,
        ``force_rmse_ev_per_a``, ``energy_mae_ev_per_atom``, ``miss_rate``, ``rdf_difference``,
        ``wall_s``, ``md_steps``, ``threshold``, ``stopped_calling_at_step``...), ``rdf_noise_floor``,
        ``acceptance``, ``protocol``, ``machine``, ``versions``, ``date``.

    Raises:
        ConfigError: the config is invalid, a variant is unknown, ``every_kth`` lacks its k, or a
            variant's folder exists.
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if "every_kth" in variants and label_every is None and "calibrated" not in variants:
        raise ConfigError("every_kth needs the calibrated variant's oracle calls, or label_every")
    config = load_otf_config(config_path)
    if steps is not None:
        config = dataclasses.replace(
            config, walkers=tuple(dataclasses.replace(w, steps=steps) for w in config.walkers)
        )
    with tempfile.TemporaryDirectory(prefix="alloop-bench-otf-") as scratch:
        root = Path(workdir) if workdir is not None else Path(scratch)
        for name in variants:
            if (root / name).exists():
                raise ConfigError(f"{root / name} exists; choose another workdir")
        (root / "ground_truth").mkdir(parents=True)
        truth = run_ground_truth(config, root / "ground_truth")
        replica = run_ground_truth(config, root / "ground_truth" / "replica", seed_offset=1)
        results: dict[str, dict[str, Any]] = {
            "ground_truth": {
                "oracle_calls": truth.md_steps,
                "oracle_step_fraction": 1.0,
                "force_rmse_ev_per_a": 0.0,
                "energy_mae_ev_per_atom": 0.0,
                "miss_rate": 0.0,
                "rdf_difference": 0.0,
                "wall_s": truth.wall_s,
                "md_steps": truth.md_steps,
                "threshold": None,
                "stopped_calling_at_step": None,
                "held_out_frames": len(truth.held_out),
            }
        }
        if on_variant is not None:
            on_variant("ground_truth", results["ground_truth"])
        base = config.otf
        settings = {
            "calibrated": base,
            "fixed_threshold": dataclasses.replace(base, calibrate=False, label_every=None),
        }
        (root / "ground_truth" / "result.json").write_text(json.dumps(results["ground_truth"], indent=1))
        for name in ("calibrated", "every_kth", "fixed_threshold"):  # (d) needs (b); (c) may call most
            if name not in variants:
                continue
            if name == "every_kth":
                k = label_every
                if k is None:
                    k = every_kth_interval(
                        config.walkers, results["calibrated"]["oracle_calls"] - base.initial_frames
                    )
                settings[name] = dataclasses.replace(base, label_every=k)
            if name == "fixed_threshold" and "calibrated" in results:
                # The same oracle budget as (b): which committee spends it better?
                budget = results["calibrated"]["oracle_calls"]
                settings[name] = dataclasses.replace(settings[name], max_oracle_calls=budget)

            def rounds(report: RoundReport, name: str = name) -> None:
                if on_round is not None:
                    on_round(name, report)

            variant = dataclasses.replace(config, otf=settings[name])
            results[name] = run_committee_variant(variant, root / name, truth, rounds)
            (root / name / "result.json").write_text(json.dumps(results[name], indent=1))
            if on_variant is not None:
                on_variant(name, results[name])
    return {
        "variants": {name: results[name] for name in VARIANTS if name in results},
        "rdf_noise_floor": rdf_difference(replica.rdf, truth.rdf),
        "acceptance": acceptance(results),
        "protocol": {
            "config": str(config_path),
            "walkers": [dataclasses.asdict(w) for w in config.walkers],
            "atoms": len(config.start()),
            "tolerance_ev_per_a": base.tolerance_ev_per_a,
            "target_miss_rate": base.target_miss_rate,
            "initial_threshold_ev_per_a": base.initial_threshold_ev_per_a,
            "initial_frames": base.initial_frames,
            "check_every": CHECK_EVERY,
            "held_out_every": HELD_OUT_EVERY,
            "rdf": {"r_max_a": RDF_MAX_A, "bin_a": RDF_BIN_A, "frames": "second half of every walker"},
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}",
        "versions": _versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what this process and the processes it starts write to stdout to stderr instead.

    mace-torch prints a notice when imported, in every process that imports it (the committee's
    training workers too); this keeps a JSON report on stdout clean.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _versions() -> dict[str, str]:
    import ase
    import e3nn
    import mace
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "mace-torch": getattr(mace, "__version__", "unknown"),
        "e3nn": e3nn.__version__,
        "ase": ase.__version__,
    }
