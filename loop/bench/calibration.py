"""Calibration benchmark: prequential coverage of the surrogate's intervals on measured pools,
before and after recalibration, and what recalibration does to sample efficiency.

For each pool, ``campaigns`` pool campaigns (:mod:`loop.bench.pool`, seeds ``1000 + k``) run
in each of the :data:`VARIANTS`: ``[surrogate] calibration = "none"``, ``"scale"`` (the
acquisition and the stopping rules then use the recalibrated std) and ``"scale"`` applied to
the stopping rules only (``calibration_applies_to = "stopping"``: the acquisition keeps the
model's std, so the picks must be those of ``"none"``, seed by seed). From each campaign's
ledger (:meth:`~loop.ledger.Ledger.predictions`) come its z-scores: latent and predictive as
recorded, recalibrated as decided, and recalibrated prequentially (each cycle with the factor
fitted to earlier cycles only: :func:`loop.calibration.prequential_z`) by ``scale`` and
``conformal``. Coverage is pooled over the campaigns of a pool; sample efficiency is
experiments to Top% 0.8 (censored at the budget) and Top% at the budget.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loop import calibration
from loop.bench import metrics
from loop.bench.pool import BENCH_SEED_BASE, PoolProblem, campaign_config, run_campaign
from loop.calibration import CalibrationPoint
from loop.ledger import Ledger

#: The interval whose coverage the goal is about, and the goal's band.
LEVEL = 0.9
GOAL = (0.85, 0.95)

#: The recalibration settings compared, by name: their ``[surrogate]`` keys.
VARIANTS: dict[str, dict[str, str]] = {
    "none": {"calibration": "none"},
    "scale": {"calibration": "scale"},
    "scale_stopping": {"calibration": "scale", "calibration_applies_to": "stopping"},
}


@dataclass(frozen=True)
class PoolSpec:
    """A benchmark pool: its table (relative to the data folder) and objective."""

    name: str
    table: str
    objective: str
    maximize: bool
    good_fraction: float


POOLS: tuple[PoolSpec, ...] = (
    PoolSpec("crossed_barrel", "crossed_barrel/crossed_barrel.csv", "toughness", True, 0.05),
    PoolSpec("oer_plate_3496", "oer_plate_3496/oer_plate_3496.csv", "overpotential", False, 0.01),
)


@dataclass(frozen=True)
class CampaignOutcome:
    """One campaign's calibration record, its picks (pool rows in the order measured) and its
    Top% trajectory."""

    points: list[CalibrationPoint]
    chosen: list[int]
    top_percent: np.ndarray


def run_campaigns(
    problem: PoolProblem,
    variant: str,
    campaigns: int,
    budget: int,
    batch_size: int,
    acquisition: str = "ucb",
    on_campaign: Callable[[int], None] | None = None,
) -> list[CampaignOutcome]:
    """Run ``campaigns`` campaigns with the ``[surrogate]`` keys of ``variant`` (a name of
    :data:`VARIANTS`) and read back their calibration records."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="alloop-calibration-") as folder:
        for k in range(campaigns):
            config = campaign_config(
                problem,
                acquisition,
                seed=BENCH_SEED_BASE + k,
                ledger=Path(folder) / f"{variant}-{k}.db",
                batch_size=batch_size,
                max_experiments=budget,
                surrogate=VARIANTS[variant],
            )
            trace = run_campaign(problem, config, budget)
            with Ledger(config.ledger_location) as ledger:
                points = ledger.predictions(int(ledger.campaign()["id"]))
            outcomes.append(CampaignOutcome(points, trace.chosen, trace.topcount / problem.good_count))
            if on_campaign is not None:
                on_campaign(k)
    return outcomes


def coverage_table(outcomes: Sequence[CampaignOutcome]) -> dict[str, Any]:
    """Pooled and per-campaign coverage of the 90% interval for each std."""
    variants: dict[str, Callable[[Sequence[CalibrationPoint]], list[float]]] = {
        "latent": lambda p: calibration.scores(p, "latent"),
        "predictive": lambda p: calibration.scores(p, "predictive"),
        "as_decided": lambda p: calibration.scores(p, "recalibrated"),
        "scale_prequential": lambda p: calibration.prequential_z(p, "scale"),
        "conformal_prequential": lambda p: calibration.prequential_z(p, "conformal"),
    }
    table = {}
    for name, z_of in variants.items():
        per = [z_of(o.points) for o in outcomes]
        pooled = [z for zs in per for z in zs]
        table[name] = {
            **calibration.summarize(pooled),
            "per_campaign_coverage_90": [calibration.coverage(zs, LEVEL) for zs in per],
        }
    return table


def efficiency(outcomes: Sequence[CampaignOutcome], budget: int) -> dict[str, Any]:
    """Experiments to Top% 0.8 per campaign (``None``: not within the budget) and Top% at the
    budget (a campaign that found every good design early counts 1)."""
    reached = [metrics.experiments_to_reach(o.top_percent, 0.8) for o in outcomes]
    censored = [budget + 1 if r is None else r for r in reached]
    at_budget = [float(o.top_percent[-1]) if o.top_percent.size else 0.0 for o in outcomes]
    return {
        "experiments_to_top80": reached,
        "median_experiments_to_top80": statistics.median(censored),
        "top_percent_at_budget": at_budget,
        "mean_top_percent_at_budget": statistics.fmean(at_budget),
    }


def same_picks(reference: Sequence[CampaignOutcome], other: Sequence[CampaignOutcome]) -> list[bool]:
    """Per seed, whether ``other`` measured exactly the pool rows ``reference`` did, in order."""
    return [a.chosen == b.chosen for a, b in zip(reference, other, strict=True)]


def decide(table: dict[str, Any]) -> dict[str, Any]:
    """The pre-registered rules (benchmarks/RESULTS.md, "Calibration"): per pool, coverage goal
    met by a recalibration when its pooled 90% coverage lies in [0.85, 0.95]; sample efficiency
    no worse when ``scale`` campaigns' mean Top% at the budget is at least the ``none`` ones'
    minus 0.05 and their censored median experiments to Top% 0.8 is at most the ``none`` ones'
    + 10%. The addendum's two claims on ``scale`` applied to the stopping rules only: it
    picked what ``none`` picked on every seed, and the intervals its stopping rules used met
    the coverage goal."""
    low, high = GOAL
    verdict: dict[str, Any] = {}
    for name, pool in table.items():
        cov = pool["coverage"]
        met = {k: low <= (cov[k]["coverage"]["0.9"] or 0.0) <= high for k in cov}
        none, scaled = pool["efficiency"]["none"], pool["efficiency"]["scale"]
        verdict[name] = {
            "coverage_goal_met": met,
            "efficiency_no_worse": (
                scaled["mean_top_percent_at_budget"] >= none["mean_top_percent_at_budget"] - 0.05
                and scaled["median_experiments_to_top80"] <= 1.1 * none["median_experiments_to_top80"]
            ),
            "stopping_only": {
                "picks_identical_to_none": all(pool["picks_identical_to_none"]),
                "coverage_goal_met": met["scale_stopping_as_decided"],
            },
        }
    return verdict


def default_by_rule(verdict: dict[str, Any]) -> dict[str, str]:
    """The ``[surrogate]`` keys the addendum's rule makes the default: ``scale`` on the stopping
    rules only where it picked as ``none`` and its intervals met the coverage goal on every
    pool, else ``none``."""
    adopted = all(
        v["stopping_only"]["picks_identical_to_none"] and v["stopping_only"]["coverage_goal_met"]
        for v in verdict.values()
    )
    return VARIANTS["scale_stopping" if adopted else "none"]


def run_calibration_benchmark(
    data_dir: str | Path,
    campaigns: int = 10,
    budget: int = 100,
    batch_size: int = 4,
    pools: Sequence[PoolSpec] = POOLS,
    on_campaign: Callable[[str, str, int], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark on every pool; JSON-ready tables and the rules' verdict.

    Raises:
        FileNotFoundError: a pool's table is not under ``data_dir``.
    """
    table: dict[str, Any] = {}
    for spec in pools:
        path = Path(data_dir) / spec.table
        if not path.is_file():
            raise FileNotFoundError(f"benchmark table {path} not found (see ../shared/data/README.md)")
        problem = PoolProblem.from_csv(path, spec.objective, spec.maximize, spec.good_fraction)
        runs: dict[str, list[CampaignOutcome]] = {}
        for variant in VARIANTS:

            def progress(k: int, variant: str = variant, name: str = spec.name) -> None:
                if on_campaign is not None:
                    on_campaign(name, variant, k)

            runs[variant] = run_campaigns(
                problem, variant, campaigns, budget, batch_size, on_campaign=progress
            )
        table[spec.name] = {
            "pool_size": problem.pool_size,
            "good_count": problem.good_count,
            "coverage": {
                **coverage_table(runs["none"]),
                "scale_as_decided": coverage_table(runs["scale"])["as_decided"],
                "scale_stopping_as_decided": coverage_table(runs["scale_stopping"])["as_decided"],
            },
            "efficiency": {v: efficiency(o, budget) for v, o in runs.items()},
            "picks_identical_to_none": same_picks(runs["none"], runs["scale_stopping"]),
        }
    settings = {"campaigns": campaigns, "budget": budget, "batch_size": batch_size, "acquisition": "ucb"}
    verdict = decide(table)
    return {"settings": settings, "pools": table, "verdict": verdict, "default": default_by_rule(verdict)}


#: The on-the-fly example whose force spread :func:`otf_force_coverage` measures.
OTF_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "otf_md" / "otf.toml"


def otf_force_coverage(
    draws: int, config: str | Path = OTF_EXAMPLE, workdir: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """The on-the-fly example's force coverage over ``draws`` draws of its calibrated loop
    (:func:`~loop.bench.otf.run_otf_seeds`, seed offsets ``0..draws-1``): per frame and per force
    component, raw and recalibrated prequentially, and the goal's verdict per method.

    Args:
        options: Passed to :func:`~loop.bench.otf.run_otf_benchmark` (e.g. ``steps``).
    """
    from loop.bench.otf import run_otf_seeds

    result = run_otf_seeds(config, list(range(draws)), workdir, variants=("calibrated",), **options)
    coverage = result["summary"]["variants"]["calibrated"]["force_coverage"]
    return {"draws": draws, "force_coverage": coverage, "goal_met": force_goal(coverage)}


def force_goal(coverage: dict[str, Any]) -> dict[str, bool | None]:
    """Per recalibration, whether the force components' 90% coverage is within :data:`GOAL`
    (``None`` without component z-scores)."""
    components = coverage.get("components")
    if components is None:
        return {"scale": None, "conformal": None}
    low, high = GOAL
    return {
        method: low <= components["recalibrated"][method]["coverage"][f"{LEVEL:g}"] <= high
        for method in ("scale", "conformal")
    }


def near_hull_rule(seeds: int, workdir: str | Path, within_mev: float = 2.0) -> dict[str, Any]:
    """The near-hull stopping rule on the alloy example (:mod:`loop.bench.near_hull`: batch-4
    Thompson, the default calibration, the exhaustive EMT truth cached in ``workdir``), seeds
    ``0..seeds-1``, and the issue's two conditions."""
    from loop.bench.near_hull import NearHullCampaign, run_seed

    folder = Path(workdir).resolve()
    runs = [run_seed(NearHullCampaign(folder, seed, within_mev=within_mev)) for seed in range(seeds)]
    return {"within_mev": within_mev, "runs": runs, **near_hull_verdict(runs)}


def near_hull_verdict(runs: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """(a) no campaign stopped by the rule with a true near-hull structure unmeasured; (b) every
    campaign stopped by the rule before its budget."""
    never_missing = all(not (r["stopped_by_rule"] and r["near_hull_missed"]) for r in runs)
    always_early = all(r["stopped_by_rule"] and r["experiments"] < r["budget"] for r in runs)
    return {
        "never_stops_missing": never_missing,
        "stops_before_budget": always_early,
        "met": never_missing and always_early,
    }
