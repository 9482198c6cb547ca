"""Ground truth of the discovery benchmark: every candidate of a pool relaxed with EMT.

The pool and the relaxed formation energies are cached under the benchmark's workdir, keyed
by the pool options and the relaxation settings: ``pool-<key>.json`` (the candidates) and
``truth-<key>.jsonl`` (one line per relaxed candidate, appended as results arrive, so a killed
run continues where it stopped). Relaxations run in a process pool of ``workers`` processes
(one by default: the machine is shared), with the oracle's own job code
(:func:`oracles.dft_job.execute`) and the same elemental references as :class:`DFTRunner`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop.candidate import Candidate
from loop.structures import StructureSpaceOptions, candidate_batches
from oracles.calculators import CalculatorSpec
from oracles.dft_job import JobSettings

#: The campaign oracle's settings (examples/alloy_discovery/campaign.toml): EMT, positions
#: only at Vegard's-law volume, BFGS to 0.05 eV/Å in at most 200 steps.
CAMPAIGN_SETTINGS: dict[str, Any] = JobSettings(
    CalculatorSpec("emt"), "relax", relax_cell=False, optimizer="BFGS", fmax_ev_per_a=0.05, steps=200
).as_dict()


@dataclass(frozen=True)
class TruthRow:
    """One relaxed candidate: ``status`` is ``ok`` or the job's failure kind."""

    id: str
    formula: str
    status: str
    formation_energy_per_atom: float | None
    n_steps: int
    wall_s: float


def cache_key(options: StructureSpaceOptions, settings: dict[str, Any]) -> str:
    """A short hash of the pool options and relaxation settings."""
    text = options.model_dump_json() + json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_pool(options: StructureSpaceOptions, workdir: Path, key: str) -> list[Candidate]:
    """The pool's candidates, generated once and kept in ``<workdir>/pool-<key>.json``."""
    path = workdir / f"pool-{key}.json"
    if path.is_file():
        return [Candidate(p) for p in json.loads(path.read_text())]
    candidates = [c for batch in candidate_batches(options) for c in batch]
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([dict(c.params) for c in candidates]))
    tmp.replace(path)
    return candidates


def read_truth(path: Path) -> dict[str, TruthRow]:
    """The rows written so far (a torn last line, from a killed run, is skipped)."""
    rows: dict[str, TruthRow] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = TruthRow(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        rows[row.id] = row
    return rows


def ground_truth(
    candidates: Sequence[Candidate],
    path: Path,
    settings: dict[str, Any] | None = None,
    workers: int = 1,
    chunk: int = 25,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, TruthRow]:
    """Relax every candidate not yet in ``path``, appending one line per candidate.

    Args:
        candidates: The pool.
        path: The JSON-lines cache (read, then appended to).
        settings: Job settings (:meth:`JobSettings.as_dict`); default: the campaign's.
        workers: Processes relaxing at once.
        chunk: Candidates per task handed to a process.
        progress: Called with ``(done, total)`` after each chunk.

    Returns:
        Every candidate's row, by id.
    """
    settings = settings or CAMPAIGN_SETTINGS
    rows = read_truth(path)
    todo = [dict(c.params) for c in candidates if c.id not in rows]
    if not todo:
        return rows
    references = _references(settings, sorted({s for p in todo for s in _symbols(p)}), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as executor, path.open("a") as out:
        futures = [
            executor.submit(_relax_chunk, todo[i : i + chunk], settings, references)
            for i in range(0, len(todo), chunk)
        ]
        for future in as_completed(futures):
            for row in future.result():
                out.write(json.dumps(row.__dict__) + "\n")
                rows[row.id] = row
            out.flush()
            if progress is not None:
                progress(len(rows), len(candidates))
    return rows


def _symbols(params: dict[str, Any]) -> list[str]:
    from loop.structure_codec import structure_from_params

    return [el.symbol for el in structure_from_params(params).composition]


def _references(settings: dict[str, Any], elements: list[str], path: Path) -> dict[str, float]:
    """Energy per atom of each element's ``ase.build.bulk`` crystal, as :class:`DFTRunner` has it."""
    from ase.build import bulk

    from oracles.dft_job import execute

    file = path.with_name(path.stem + "-references.json")
    known: dict[str, float] = json.loads(file.read_text()) if file.is_file() else {}
    job = JobSettings.from_dict(settings)
    with tempfile.TemporaryDirectory() as folder:
        for el in elements:
            if el not in known:
                atoms = bulk(el)
                known[el] = float(execute(atoms, job, folder)["energy"]) / len(atoms)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(known, indent=1))
    return known


def _relax_chunk(
    params: list[dict[str, Any]], settings: dict[str, Any], references: dict[str, float]
) -> list[TruthRow]:
    """Worker: relax each candidate in a scratch folder (one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    return list(_relax_each(params, JobSettings.from_dict(settings), references))


def _relax_each(
    params: list[dict[str, Any]], settings: JobSettings, references: dict[str, float]
) -> Iterator[TruthRow]:
    from oracles.dft import candidate_atoms
    from oracles.dft_job import execute

    with tempfile.TemporaryDirectory() as folder:
        for p in params:
            candidate = Candidate(p)
            atoms = candidate_atoms(candidate)
            start = time.perf_counter()
            outcome = execute(atoms, settings, folder)
            wall_s = time.perf_counter() - start
            formula = atoms.get_chemical_formula(mode="metal")
            if outcome["status"] != "ok":
                yield TruthRow(candidate.id, formula, outcome["status"], None, 0, wall_s)
                continue
            symbols = atoms.get_chemical_symbols()
            formation = (float(outcome["energy"]) - sum(references[s] for s in symbols)) / len(symbols)
            yield TruthRow(candidate.id, formula, "ok", formation, int(outcome["n_steps"]), wall_s)
