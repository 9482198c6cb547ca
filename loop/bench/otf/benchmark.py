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
did not call the oracle on it. At the end, the final committee's force RMSE (all components)
and energy MAE (per atom) are measured on (a)'s held-out frames (with ``final_fit``, the
potential refitted from scratch on the variant's frames), and the RDF of its trajectory's second
half is compared with (a)'s. The *in-run* RMSE and MAE predict each held-out frame with the
committee that drove the same walker at the same step: how good the potential the MD ran on was.

The RDF difference is ``sum |g - g_a| / sum g_a`` over bins of ``RDF_BIN_A`` up to ``RDF_MAX_A``
(every periodic image counts, so a small cell is fine); ``rdf_noise_floor`` is the same
difference between (a) and an oracle-only replica whose walkers use other seeds: what
thermal noise alone gives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from loop.errors import ConfigError, describe_validation_error
from loop.ledger import Ledger
from loop.otf import OTFSettings, RoundReport, Walker, WalkerSpec
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
class _Records:
    """One walker's share of a :class:`_Trajectory`, in the order it stepped."""

    rdf_frames: list[Atoms] = field(default_factory=list)
    held_out: list[Frame] = field(default_factory=list)
    checks: list[MissCheck] = field(default_factory=list)
    in_run: list[tuple[np.ndarray, float]] = field(default_factory=list)


@dataclass
class _Trajectory:
    """What a variant's walkers went through: frames for the RDF, held-out frames, checks.

    With ``reference`` (the ground truth's held-out frames), each one is also predicted by the
    committee that drives the same walker at the same step (``in_run``): how good the potential
    the MD ran on was, there and then, rather than the run's final potential.

    Walkers step in threads; each keeps its own records, and the trajectory lists them walker by
    walker (by name), so sums and ``checks.csv`` do not depend on how the threads interleaved.
    """

    calculator: Callable[[], BaseCalculator]
    tolerance_ev_per_a: float = math.inf
    check: bool = False
    hold_out: bool = False
    reference: dict[str, Frame] = field(default_factory=dict)
    by_walker: dict[str, _Records] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, walker: Walker) -> None:
        """Record ``walker``'s current frame (called by :class:`_ObservedWalker`; thread-safe)."""
        atoms, step = walker.atoms, walker.step
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        with self._lock:
            records = self.by_walker.setdefault(walker.spec.name, _Records())
        key = f"{walker.spec.name}:{step}"
        if step > walker.spec.steps // 2:
            records.rdf_frames.append(frame)
        if self.hold_out and step % HELD_OUT_EVERY == 0:
            held_out = Frame.from_atoms(frame, atoms.get_potential_energy(), atoms.get_forces(), id=key)
            records.held_out.append(held_out)
        if key in self.reference:
            records.in_run.append(_errors(atoms.calc.committee, self.reference[key]))  # type: ignore[union-attr]
        if self.check and step % CHECK_EVERY == 0:
            checked = frame.copy()
            checked.calc = self.calculator()
            predicted, true = atoms.get_forces(), checked.get_forces()
            u = atoms.calc.results["committee"].uncertainty  # type: ignore[union-attr]
            largest = float(np.linalg.norm(predicted - true, axis=1).max())
            records.checks.append(
                MissCheck(walker.spec.name, step, force_error(predicted, true), float(u), largest)
            )

    def _walker_by_walker(self, kind: str) -> list[Any]:
        return [item for name in sorted(self.by_walker) for item in getattr(self.by_walker[name], kind)]

    @property
    def rdf_frames(self) -> list[Atoms]:
        return self._walker_by_walker("rdf_frames")

    @property
    def held_out(self) -> list[Frame]:
        return self._walker_by_walker("held_out")

    @property
    def checks(self) -> list[MissCheck]:
        return self._walker_by_walker("checks")

    @property
    def in_run(self) -> list[tuple[np.ndarray, float]]:
        return self._walker_by_walker("in_run")

    def mark_called(self, labelled: set[tuple[str, int]]) -> None:
        """The loop sent these (walker, step) frames to the oracle: checks there were no misses."""
        for check in self.checks:
            check.called = (check.walker, check.step) in labelled

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
        raise ConfigError(describe_validation_error(exc, "oracle")) from None
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
            walker.md_step()
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
        oracle_calculator(config, folder / "checks"),
        config.otf.tolerance_ev_per_a,
        check=True,
        reference={frame.id: frame for frame in truth.held_out},
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
            report = run.run()
            wall = time.perf_counter() - started
            trajectory.mark_called(
                {(str(e.params["walker"]), int(e.params["step"])) for e in ledger.evaluations(run.id)}
            )
            force_rmse, energy_mae = held_out_errors(run.committee, truth.held_out)
            in_run_rmse, in_run_mae = _summarize_errors(trajectory.in_run)
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
        "in_run_force_rmse_ev_per_a": in_run_rmse,
        "in_run_energy_mae_ev_per_atom": in_run_mae,
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


def held_out_errors(committee: MLIPCommittee, frames: Sequence[Frame]) -> tuple[float, float]:
    """The committee's mean-prediction errors on labelled frames.

    Returns:
        Force RMSE over every component (eV/Å) and energy MAE per atom (eV/atom).
    """
    return _summarize_errors([_errors(committee, frame) for frame in frames])


def _errors(committee: MLIPCommittee, frame: Frame) -> tuple[np.ndarray, float]:
    """The committee's mean-prediction force errors (every component) and energy error per atom."""
    prediction = committee.predict(frame.atoms())
    forces = (prediction.forces.mean(axis=0) - frame.forces).reshape(-1)
    return forces, abs(float(prediction.energy.mean()) - frame.energy) / len(frame.numbers)


def _summarize_errors(errors: Sequence[tuple[np.ndarray, float]]) -> tuple[float, float]:
    """Force RMSE over every component and mean energy error per atom (NaN when empty)."""
    if not errors:
        return math.nan, math.nan
    forces = np.concatenate([f for f, _ in errors])
    return float(np.sqrt(np.mean(forces**2))), float(np.mean([e for _, e in errors]))


# --- the benchmark -----------------------------------------------------------------------------


def acceptance(variants: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's acceptance criteria on the calibrated loop (``None``: a variant it needs is missing).

    ``beats_fixed_threshold`` / ``beats_every_kth``: a lower held-out force RMSE of the final
    potential than that baseline with at most its oracle calls; ``beats_baselines``: both;
    ``..._in_run``: the same for the potential that drove the MD (``in_run_force_rmse_ev_per_a``).
    """
    b = variants.get("calibrated") or {}

    def beats(name: str, in_run: bool) -> bool | None:
        other = variants.get(name)
        if not b or other is None:
            return None
        key = "in_run_force_rmse_ev_per_a" if in_run else "force_rmse_ev_per_a"
        return bool(b[key] < other[key] and b["oracle_calls"] <= other["oracle_calls"])

    return _criteria(b.get("oracle_step_fraction"), b.get("force_rmse_ev_per_a"), b.get("miss_rate"), beats)


def _criteria(
    fraction: float | None,
    rmse: float | None,
    miss: float | None,
    beats: Callable[[str, bool], bool | None],
) -> dict[str, bool | None]:
    """The criteria from the calibrated loop's step fraction, force RMSE and miss rate, and
    ``beats(baseline, in_run)``; ``None`` where a figure or a variant is missing."""
    fixed, kth = beats("fixed_threshold", False), beats("every_kth", False)
    return {
        "oracle_step_fraction_at_most_2pct": None if fraction is None else fraction <= 0.02,
        "force_rmse_at_most_0.1_ev_per_a": None if rmse is None else rmse <= 0.1,
        "miss_rate_at_most_2pct": None if miss is None else miss <= 0.02,
        "beats_fixed_threshold": fixed,
        "beats_every_kth": kth,
        "beats_baselines": None if fixed is None or kth is None else fixed and kth,
        "beats_fixed_threshold_in_run": beats("fixed_threshold", True),
        "beats_every_kth_in_run": beats("every_kth", True),
    }


def run_otf_benchmark(
    config_path: str | Path,
    workdir: str | Path | None = None,
    steps: int | None = None,
    variants: Sequence[str] = VARIANTS,
    label_every: int | None = None,
    on_variant: Callable[[str, dict[str, Any]], None] | None = None,
    on_round: Callable[[str, RoundReport], None] | None = None,
    seed_offset: int = 0,
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
        seed_offset: Added to every walker's seed and to the committee's (another draw of the
            same protocol; :func:`run_otf_seeds` runs several).

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
    config = dataclasses.replace(
        config,
        walkers=tuple(
            dataclasses.replace(w, steps=steps or w.steps, seed=w.seed + seed_offset) for w in config.walkers
        ),
        committee=dataclasses.replace(config.committee, seed=config.committee.seed + seed_offset),
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
                "in_run_force_rmse_ev_per_a": 0.0,
                "in_run_energy_mae_ev_per_atom": 0.0,
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
            "seed_offset": seed_offset,
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


def run_otf_seeds(
    config_path: str | Path,
    seed_offsets: Sequence[int],
    workdir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The benchmark once per seed offset (walker and committee seeds), and what the runs say together.

    One run ranks the variants by chance as much as by merit: the committee's training and the
    walkers' noise move a force RMSE by as much as the variants differ. See :func:`summarize_seeds`.

    Args:
        config_path: An on-the-fly TOML file.
        seed_offsets: One run per offset (``0`` is the config as it is).
        workdir: Each run goes to ``<workdir>/seed-<offset>`` (default: temporary folders).
        **options: Passed to :func:`run_otf_benchmark`.

    Returns:
        ``runs`` (each :func:`run_otf_benchmark`'s result) and ``summary``.

    Raises:
        ConfigError: no offsets or a repeated one, or what :func:`run_otf_benchmark` raises.
    """
    if not seed_offsets or len(set(seed_offsets)) != len(seed_offsets):
        raise ConfigError(f"seed offsets must be distinct and at least one, got {list(seed_offsets)}")
    runs = [
        run_otf_benchmark(
            config_path,
            None if workdir is None else Path(workdir) / f"seed-{offset}",
            seed_offset=offset,
            **options,
        )
        for offset in seed_offsets
    ]
    return {"runs": runs, "summary": summarize_seeds(runs)}


def summarize_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the mean and spread of each figure over runs of :func:`run_otf_benchmark`;
    and for the calibrated loop against each baseline, in how many runs it had the lower force
    RMSE at no more oracle calls, and the mean of the per-run RMSE differences.

    ``acceptance`` holds the issue's criteria on the means (calls, RMSE, miss rate) and, for
    ``beats_*``, on the runs: lower mean RMSE, at no more calls in every run.
    """
    if not runs:
        raise ValueError("no runs to summarize")
    keys = ("oracle_calls", "oracle_step_fraction", "force_rmse_ev_per_a", "energy_mae_ev_per_atom")
    keys += ("in_run_force_rmse_ev_per_a", "miss_rate", "rdf_difference", "wall_s")
    variants: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        present = [r["variants"][name] for r in runs if name in r["variants"]]
        if not present:
            continue
        variants[name] = {
            key: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
            }
            for key in keys
            if (values := [float(v[key]) for v in present if v.get(key) is not None])
        }
    comparisons: dict[str, dict[str, Any]] = {}
    for baseline in ("fixed_threshold", "every_kth"):
        pairs = [
            (r["variants"]["calibrated"], r["variants"][baseline])
            for r in runs
            if "calibrated" in r["variants"] and baseline in r["variants"]
        ]
        if not pairs:
            continue
        comparisons[baseline] = {
            "runs": len(pairs),
            "never_more_calls": all(b["oracle_calls"] <= o["oracle_calls"] for b, o in pairs),
        }
        for prefix, key in (("", "force_rmse_ev_per_a"), ("in_run_", "in_run_force_rmse_ev_per_a")):
            differences = [b[key] - o[key] for b, o in pairs if key in b and key in o]
            mean_difference = float(np.mean(differences)) if differences else None
            comparisons[baseline] |= {
                f"{prefix}wins": sum(d < 0 for d in differences),
                f"{prefix}mean_rmse_difference_ev_per_a": mean_difference,
                f"{prefix}rmse_differences_ev_per_a": differences,
            }
    b = variants.get("calibrated", {})

    def mean(key: str) -> float | None:
        return b[key]["mean"] if key in b else None

    def beats(name: str, in_run: bool) -> bool | None:
        c = comparisons.get(name)
        difference = None if c is None else c[f"{'in_run_' if in_run else ''}mean_rmse_difference_ev_per_a"]
        return None if difference is None else bool(difference < 0 and c["never_more_calls"])

    return {
        "runs": len(runs),
        "seed_offsets": [r.get("protocol", {}).get("seed_offset") for r in runs],
        "variants": variants,
        "calibrated_against": comparisons,
        "acceptance": _criteria(
            mean("oracle_step_fraction"), mean("force_rmse_ev_per_a"), mean("miss_rate"), beats
        ),
    }


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
