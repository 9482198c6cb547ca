"""The benchmark's variants: the walkers on the oracle's calculator (the ground truth), and an
on-the-fly run measured against it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import BaseCalculator

from loop.bench.otf.trajectory import (
    Trajectory,
    held_out_errors,
    radial_distribution,
    rdf_difference,
    summarize_errors,
)
from loop.errors import ConfigError, describe_validation_error
from loop.ledger import Ledger
from loop.otf import OTFConfig, OTFSettings, RoundReport, Walker, WalkerSpec, build_otf_run
from surrogates.mlip import Frame


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
    trajectory = Trajectory(calculator, hold_out=seed_offset == 0)
    start, md_steps = config.start(), 0
    started = time.perf_counter()
    for spec in config.walkers:
        spec = dataclasses.replace(spec, seed=spec.seed + seed_offset)
        walker = Walker(spec, start, calculator(), config.otf, on_step=trajectory.observe)
        while not walker.finished:  # the walker's guards, without a committee or calls
            walker.advance()
            md_steps += 1
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
    trajectory = Trajectory(
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
        run = build_otf_run(config, ledger, on_round=round_done, on_step=trajectory.observe)
        try:
            report = run.run()
            wall = time.perf_counter() - started
            trajectory.mark_called(
                {(str(e.params["walker"]), int(e.params["step"])) for e in ledger.evaluations(run.id)}
            )
            force_rmse, energy_mae = held_out_errors(run.committee, truth.held_out)
            in_run_rmse, in_run_mae = summarize_errors(trajectory.in_run)
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
        "force_coverage": report.force_coverage,
        "force_ratios": list(run.calibration.ratios),
        "force_z": run.calibration.force_z,
    }
