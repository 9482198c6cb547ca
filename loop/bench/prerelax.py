"""What pre-relaxation with a universal potential saves the DFT oracle (``alloop bench prerelax``).

The same candidates (orderings of a parent lattice, at Vegard's-law volume, their positions
rattled with a fixed seed) are relaxed by the DFT oracle twice: from the candidate as given,
and from the structure the universal potential relaxed first. Per candidate the DFT job's
ionic steps and wall time are recorded, with the pre-relaxation's steps and wall time, and
the final energies (both runs should find the same minimum; a different one is reported, not
hidden). EMT stands in for DFT by default; ``calculator = "gpaw"`` measures the real thing.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pymatgen.io.ase import AseAtomsAdaptor

from loop.candidate import Candidate
from loop.structure_codec import structure_from_params, structure_to_params
from loop.structures import StructureSpaceOptions, generate
from oracles.calculators import CalculatorSpec
from oracles.dft import DFTRunner
from oracles.dft_job import JobSettings
from oracles.prerelax import PreRelaxation


def pick_candidates(
    elements: Sequence[str], max_atoms: int, count: int, rattle_a: float, seed: int
) -> list[Candidate]:
    """``count`` orderings of fcc ``elements`` in cells of at most ``max_atoms`` sites, drawn
    with ``seed``; each one's positions rattled by ``rattle_a`` (Å, standard deviation)."""
    pool = generate(StructureSpaceOptions(elements=list(elements), lattice=["fcc"], max_atoms=max_atoms))
    candidates = list(pool.candidates)
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    out = []
    for k, candidate in enumerate(chosen):
        atoms = structure_from_params(candidate.params).to_ase_atoms()
        atoms.rattle(rattle_a, seed=seed + k)
        prototype = str(candidate.params.get("prototype", ""))
        out.append(Candidate(structure_to_params(AseAtomsAdaptor.get_structure(atoms), prototype)))
    return out


def run(
    candidates: Sequence[Candidate],
    settings: JobSettings,
    prerelaxation: PreRelaxation,
    workdir: Path,
    wall_time_s: float = 1800.0,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Relax every candidate with and without ``prerelaxation``; rows and a summary."""
    runner = DFTRunner(settings, workdir, wall_time_s=wall_time_s, retryable=())
    runner.references(sorted(elements_of(candidates)))  # once, outside the timed jobs
    rows = []
    for candidate in candidates:
        row: dict[str, Any] = {"candidate": candidate.id, "n_atoms": _n_atoms(candidate)}
        for arm, potential in (("plain", None), ("prerelaxed", prerelaxation)):
            runner.prerelaxation = potential
            start = time.perf_counter()
            try:
                result = runner.evaluate(candidate)
            except Exception as exc:  # a failed relaxation is a result of the benchmark
                row[arm] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                continue
            meta = result.metadata
            row[arm] = {
                "dft_steps": meta["n_steps"],
                "dft_wall_s": meta["wall_s"],
                "total_wall_s": time.perf_counter() - start,
                "energy_per_atom": result.measurements["energy_per_atom"].value,
                "prerelax": meta["prerelax"],
            }
        rows.append(row)
        if on_candidate is not None:
            on_candidate(row)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means and medians over the candidates both arms relaxed."""
    both = [r for r in rows if "dft_steps" in r["plain"] and "dft_steps" in r["prerelaxed"]]
    if not both:
        return {"n_compared": 0, "n_failed": len(rows)}

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "median": statistics.median(values), "sum": sum(values)}

    plain_steps = [r["plain"]["dft_steps"] for r in both]
    pre_steps = [r["prerelaxed"]["dft_steps"] for r in both]
    plain_wall = [r["plain"]["dft_wall_s"] for r in both]
    pre_wall = [r["prerelaxed"]["dft_wall_s"] for r in both]
    pre_total = [r["prerelaxed"]["dft_wall_s"] + r["prerelaxed"]["prerelax"]["wall_s"] for r in both]
    gaps = [abs(r["plain"]["energy_per_atom"] - r["prerelaxed"]["energy_per_atom"]) * 1000 for r in both]
    return {
        "n_compared": len(both),
        "n_failed": len(rows) - len(both),
        "dft_steps_plain": stats(plain_steps),
        "dft_steps_prerelaxed": stats(pre_steps),
        "dft_steps_saved_fraction": 1 - sum(pre_steps) / max(sum(plain_steps), 1),
        "dft_wall_s_plain": stats(plain_wall),
        "dft_wall_s_prerelaxed": stats(pre_wall),
        "prerelax_steps": stats([r["prerelaxed"]["prerelax"]["steps"] for r in both]),
        "prerelax_wall_s": stats([r["prerelaxed"]["prerelax"]["wall_s"] for r in both]),
        "wall_s_saved_fraction_with_prerelax": 1 - sum(pre_total) / sum(plain_wall),
        "fewer_dft_steps": sum(p < q for p, q in zip(pre_steps, plain_steps, strict=True)),
        "more_dft_steps": sum(p > q for p, q in zip(pre_steps, plain_steps, strict=True)),
        "energy_gap_mev_per_atom_max": max(gaps),
        "different_minimum_over_5_mev": sum(g > 5 for g in gaps),
    }


def elements_of(candidates: Sequence[Candidate]) -> set[str]:
    """Every element in the candidates."""
    return {str(s) for c in candidates for s in structure_from_params(c.params).composition.elements}


def _n_atoms(candidate: Candidate) -> int:
    return len(structure_from_params(candidate.params))


def calculator_spec(name: str, ecut_ev: float, kpoint_density: float) -> CalculatorSpec:
    """EMT, or GPAW at cheap settings (Fermi-Dirac smearing 0.1 eV for metals)."""
    if name == "gpaw":
        smearing = {"occupations": {"name": "fermi-dirac", "width": 0.1}}
        return CalculatorSpec("gpaw", smearing, kpoint_density, ecut_ev, "PBE")
    return CalculatorSpec(name)
