"""The near-hull stopping rule on the alloy example, judged against the exhaustive EMT truth.

Every ordering of ``examples/alloy_discovery/campaign.toml`` is relaxed once (as the example's
oracle relaxes them, cached in a JSON file); campaigns then run against a lookup oracle of
those energies with Thompson sampling in batches of 4, ``near_hull_mev``/``near_hull_sigmas``
and a ``[surrogate] calibration`` method (``default``: the file names none, so the stopping
rules judge by the std recalibrated by scale), one per seed. A campaign is judged on whether it
stopped by the rule before the budget and how many true near-hull structures it had missed.

    python -m loop.bench.near_hull --seeds 10 --within-mev 2 --workdir /tmp/near-hull
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from loop.campaign import Campaign, CampaignReport
from loop.candidate import Candidate
from loop.config import CampaignConfig, load_config
from loop.ledger import Ledger
from loop.stability import HullPoint, hull_heights, hull_points, near_hull, phase_diagram
from loop.stopping import NearHull
from loop.structure_codec import structure_from_params
from oracles.base import Measurement, Oracle, Result
from oracles.dft import DFTRunner
from oracles.dft_job import execute

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alloy_discovery" / "campaign.toml"
PROPERTY = "formation_energy_per_atom"


class LookupOracle(Oracle):
    """Answers formation energies from a table (eV/atom by candidate id)."""

    implemented_properties = (PROPERTY,)

    def __init__(self, energies: Mapping[str, float]) -> None:
        self.energies = energies

    def evaluate(self, candidate: Candidate) -> Result:
        return Result(candidate.id, {PROPERTY: Measurement(self.energies[candidate.id], None, "eV/atom")})


def example_config(
    workdir: Path, seed: int, calibration: str, within_mev: float, sigmas: float, descriptors: str = "pairs"
) -> CampaignConfig:
    """The alloy example with batch-4 Thompson sampling and the near-hull rule
    (``calibration = "default"`` leaves ``[surrogate] calibration`` unset; ``descriptors``
    are the GP's inputs, ``[surrogate] descriptors``)."""
    name = f"near-hull-{calibration}-{within_mev:g}-{seed}" + (
        "" if descriptors == "pairs" else f"-{descriptors}"
    )
    overrides: dict[str, Any] = {
        "campaign.name": name,
        "campaign.seed": seed,
        "campaign.ledger": str(workdir / f"{name}.db"),
        "oracle.workdir": str(workdir / "runs"),
        "space.generator.cache": str(workdir / "candidates.json"),
        "acquisition.type": "thompson",
        "acquisition.batch_size": 4,
        "stopping.near_hull_mev": within_mev,
        "stopping.near_hull_sigmas": sigmas,
    }
    if calibration != "default":
        overrides["surrogate.calibration"] = calibration
    if descriptors != "pairs":
        overrides["surrogate.descriptors"] = descriptors
    return load_config(EXAMPLE, overrides)


def ground_truth(config: CampaignConfig, path: Path) -> dict[str, tuple[str, float]]:
    """``id -> (formula, formation energy per atom)`` of every candidate, cached in ``path``."""
    if path.is_file():
        return {k: (f, e) for k, (f, e) in json.loads(path.read_text()).items()}
    campaign = Campaign(config)
    oracle, pool = campaign.oracle, campaign.pool
    assert isinstance(oracle, DFTRunner) and pool is not None
    references = oracle.references(sorted({s for c in pool.candidates for s in _symbols(c)}))
    truth = {}
    folder = path.parent / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    for c in pool.candidates:
        atoms = structure_from_params(c.params).to_ase_atoms()
        outcome = execute(atoms, oracle.settings, folder)
        if outcome["status"] != "ok":
            raise RuntimeError(f"ground truth of {c.id}: {outcome['status']}: {outcome.get('message')}")
        energy = outcome["energy"] - sum(references[s] for s in atoms.get_chemical_symbols())
        truth[c.id] = (str(c.params["formula"]), energy / len(atoms))
    campaign.close()
    path.write_text(json.dumps(truth))
    return truth


def _symbols(candidate: Candidate) -> set[str]:
    return set(structure_from_params(candidate.params).to_ase_atoms().get_chemical_symbols())


def truth_points(truth: Mapping[str, tuple[str, float]]) -> list[HullPoint]:
    """The ground truth's structures with their height above its hull."""
    return hull_points([(k, f, e) for k, (f, e) in truth.items()])


def run_against_truth(
    config: CampaignConfig, truth: Mapping[str, tuple[str, float]]
) -> tuple[CampaignReport, set[str], float]:
    """Run a campaign to its end against the lookup oracle of ``truth``: its report, the ids
    it evaluated and its wall time (s)."""
    started = time.perf_counter()
    oracle = LookupOracle({k: e for k, (_, e) in truth.items()})
    campaign = Campaign(config, ledger=Ledger(config.ledger_location), oracle=oracle)
    try:
        report = campaign.run()
        done = {e.candidate_id for e in campaign.ledger.evaluations(campaign.id, ["done"])}
    finally:
        campaign.close()
    return report, done, time.perf_counter() - started


@dataclass(frozen=True)
class NearHullCampaign:
    """One campaign of the bench: its folder (shared truth and pool), seed, calibration, the
    rule's band and sigmas, and the GP's inputs."""

    workdir: Path
    seed: int
    calibration: str = "default"
    within_mev: float = 10.0
    sigmas: float = 2.0
    descriptors: str = "pairs"

    def config(self) -> CampaignConfig:
        return example_config(
            self.workdir, self.seed, self.calibration, self.within_mev, self.sigmas, self.descriptors
        )

    def truth(self) -> dict[str, tuple[str, float]]:
        return ground_truth(self.config(), self.workdir / "truth.json")


def run_seed(run: NearHullCampaign) -> dict[str, Any]:
    """One campaign: why and when it stopped, and the true near-hull structures it missed."""
    config, truth = run.config(), run.truth()
    wanted = near_hull(truth_points(truth), within_mev=run.within_mev)
    report, done, seconds = run_against_truth(config, truth)
    return {
        "seed": run.seed,
        "calibration": run.calibration,
        "descriptors": run.descriptors,
        "stop_reason": report.stop_reason,
        "stopped_by_rule": (report.stop_reason or "").startswith("near-hull goal met"),
        "experiments": report.experiments,
        "budget": config.stopping.max_experiments,
        "near_hull_true": len(wanted),
        "near_hull_missed": len(wanted - done),
        "seconds": seconds,
    }


def what_keeps_it_going(run: NearHullCampaign) -> dict[str, Any]:
    """A finished campaign's end, asked why the rule did not fire: the surrogate refitted on
    all its results, the unevaluated candidates whose lower bound still reaches the band, and
    how far above the true hull each of those really lies (meV/atom)."""
    config, truth = run.config(), run.truth()
    heights = dict(zip(truth, hull_heights(phase_diagram(truth.values()), truth.values()), strict=True))
    campaign = Campaign(config, ledger=Ledger(config.ledger_location), oracle=LookupOracle({}))
    try:
        assert campaign.pool is not None
        surrogate = campaign.fit(cycle=10_000)  # the cycle only seeds the fit
        if surrogate is None:
            raise RuntimeError(f"campaign {config.campaign.name} has too few results to fit")
        rule = NearHull(run.within_mev, run.sigmas)
        reaching = rule.reaching(campaign, surrogate)
        ids = [campaign.pool.candidates[row].id for row, _, _ in reaching]
        free = len(campaign.free_pool_rows())
    finally:
        campaign.close()
    true_mev = [heights[i] * 1000.0 for i in ids]
    std_mev = [sd * 1000.0 for _, _, sd in reaching]

    def spread(values: list[float]) -> list[float] | None:  # min, median, max
        return [round(min(values), 1), round(median(values), 1), round(max(values), 1)] if values else None

    return {
        "seed": run.seed,
        "descriptors": run.descriptors,
        "unevaluated": free,
        "reaching_the_band": len(ids),
        "truly_near_hull_among_them": sum(h <= run.within_mev + 1e-9 for h in true_mev),
        "their_true_height_mev": spread(true_mev),
        "their_std_mev": spread(std_mev),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--calibration", default="default", choices=["default", "none", "scale", "conformal"])
    parser.add_argument("--within-mev", type=float, default=10.0, help="near_hull_mev")
    parser.add_argument("--sigmas", type=float, default=2.0, help="near_hull_sigmas")
    parser.add_argument("--descriptors", default="pairs", choices=["pairs", "chgnet"], help="the GP's inputs")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--explain", action="store_true", help="ask finished campaigns' ends what kept the rule from firing"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run = NearHullCampaign(
            args.workdir.resolve(), seed, args.calibration, args.within_mev, args.sigmas, args.descriptors
        )
        print(json.dumps(what_keeps_it_going(run) if args.explain else run_seed(run)), flush=True)


if __name__ == "__main__":
    main()
