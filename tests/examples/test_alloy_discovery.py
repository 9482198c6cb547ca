"""The alloy-discovery example: the campaign finds the EMT convex hull of Cu-Au-Pd fcc
orderings with at most a quarter of the evaluations an exhaustive search needs."""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from loop.campaign import Campaign
from loop.config import load_config
from loop.ledger import Ledger
from loop.stability import best_fraction, campaign_hull, hull_points, on_hull
from loop.structure_codec import structure_from_params
from oracles.dft import DFTRunner
from oracles.dft_job import JobSettings, execute

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alloy_discovery"


def formation_energies(
    candidates: list[tuple[str, dict[str, Any]]],
    settings: JobSettings,
    references: dict[str, float],
    workdir: Path,
) -> list[tuple[str, str, float]]:
    """``(id, formula, formation energy per atom)`` of every candidate, relaxed as the campaign's
    oracle relaxes them."""
    truth = []
    for candidate_id, params in candidates:
        atoms = structure_from_params(params).to_ase_atoms()
        outcome = execute(atoms, settings, workdir)
        assert outcome["status"] == "ok", outcome
        energy = outcome["energy"] - sum(references[s] for s in atoms.get_chemical_symbols())
        truth.append((candidate_id, str(params["formula"]), energy / len(atoms)))
    return truth


@pytest.mark.slow
def test_campaign_finds_the_whole_hull_with_a_quarter_of_the_evaluations(tmp_path: Path) -> None:
    config = load_config(
        EXAMPLE / "campaign.toml",
        {
            "campaign.ledger": str(tmp_path / "campaign.db"),
            "oracle.workdir": str(tmp_path / "runs"),
            "space.generator.cache": str(tmp_path / "candidates.json"),
        },
    )
    campaign = Campaign(config)
    pool, oracle = campaign.pool, campaign.oracle
    assert pool is not None and isinstance(oracle, DFTRunner)
    assert len(pool) >= 1000

    # Ground truth: every candidate, with the same settings, in a worker while the campaign runs.
    references = oracle.references(["Au", "Cu", "Pd"])
    candidates = [(c.id, dict(c.params)) for c in pool.candidates]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as worker:
        truth_job = worker.submit(formation_energies, candidates, oracle.settings, references, tmp_path)
        report = campaign.run()
        truth = truth_job.result()
    points = hull_points(truth)
    stable = on_hull(points)
    assert 1 <= len(stable) < 0.05 * len(pool)

    budget = config.stopping.max_experiments
    assert budget is not None and budget <= 0.25 * len(pool)
    done = {e.candidate_id for e in campaign.ledger.evaluations(campaign.id, ["done"])}
    assert report.experiments <= budget
    assert stable <= done, f"missed {len(stable - done)} of {len(stable)} hull structures"
    assert best_fraction(points, 0.01) <= done
    # The campaign's own hull (from what it measured) agrees with the truth on the hull.
    assert on_hull(campaign_hull(campaign.ledger, campaign.name)) == stable
    campaign.close()

    # The report: a table and a PNG.
    sys.path.insert(0, str(EXAMPLE))
    try:
        from report import hull_plot, hull_table
    finally:
        sys.path.remove(str(EXAMPLE))
    with Ledger(tmp_path / "campaign.db") as ledger:
        measured = campaign_hull(ledger)
    table = hull_table(measured)
    assert all(p.id in table for p in measured if p.id in stable)
    png = hull_plot(measured, tmp_path / "hull.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
