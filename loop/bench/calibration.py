"""Calibration benchmark: prequential coverage of the surrogate's intervals on measured pools,
before and after recalibration, and what recalibration does to sample efficiency.

For each pool, ``campaigns`` pool campaigns (:mod:`loop.bench.pool`, seeds ``1000 + k``) run
with ``[surrogate] calibration = "none"`` and the same number with ``"scale"`` (the acquisition
and the stopping rules then use the recalibrated std). From each campaign's ledger
(:meth:`~loop.ledger.Ledger.predictions`) come its z-scores: latent and predictive as
recorded, and recalibrated prequentially (each cycle with the factor fitted to earlier cycles
only: :func:`loop.calibration.prequential_z`) by ``scale`` and ``conformal``. Coverage is
pooled over the campaigns of a pool; sample efficiency is experiments to Top% 0.8 (censored
at the budget) and Top% at the budget.
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
    """One campaign's calibration record and its Top% trajectory."""

    points: list[CalibrationPoint]
    top_percent: np.ndarray


def run_campaigns(
    problem: PoolProblem,
    method: calibration.Method,
    campaigns: int,
    budget: int,
    batch_size: int,
    acquisition: str = "ucb",
    on_campaign: Callable[[int], None] | None = None,
) -> list[CampaignOutcome]:
    """Run ``campaigns`` campaigns with ``[surrogate] calibration = method`` and read back
    their calibration records."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="alloop-calibration-") as folder:
        for k in range(campaigns):
            config = campaign_config(
                problem,
                acquisition,
                seed=BENCH_SEED_BASE + k,
                ledger=Path(folder) / f"{method}-{k}.db",
                batch_size=batch_size,
                max_experiments=budget,
                surrogate={"calibration": method},
            )
            trace = run_campaign(problem, config, budget)
            with Ledger(config.ledger_location) as ledger:
                points = ledger.predictions(int(ledger.campaign()["id"]))
            outcomes.append(CampaignOutcome(points, trace.topcount / problem.good_count))
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


def decide(table: dict[str, Any]) -> dict[str, Any]:
    """The pre-registered rule (benchmarks/RESULTS.md, "Calibration"): per pool, coverage goal met
    by a recalibration when its pooled 90% coverage lies in [0.85, 0.95]; sample efficiency no
    worse when ``scale`` campaigns' mean Top% at the budget is at least the ``none`` ones' minus
    0.05 and their censored median experiments to Top% 0.8 is at most the ``none`` ones' + 10%."""
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
        }
    return verdict


def run_calibration_benchmark(
    data_dir: str | Path,
    campaigns: int = 10,
    budget: int = 100,
    batch_size: int = 4,
    pools: Sequence[PoolSpec] = POOLS,
    on_campaign: Callable[[str, str, int], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark on every pool; JSON-ready tables and the rule's verdict.

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
        for method in ("none", "scale"):

            def progress(k: int, method: str = method, name: str = spec.name) -> None:
                if on_campaign is not None:
                    on_campaign(name, method, k)

            runs[method] = run_campaigns(problem, method, campaigns, budget, batch_size, on_campaign=progress)
        table[spec.name] = {
            "pool_size": problem.pool_size,
            "good_count": problem.good_count,
            "coverage": {
                **coverage_table(runs["none"]),
                "scale_as_decided": coverage_table(runs["scale"])["as_decided"],
            },
            "efficiency": {m: efficiency(o, budget) for m, o in runs.items()},
        }
    settings = {"campaigns": campaigns, "budget": budget, "batch_size": batch_size, "acquisition": "ucb"}
    return {"settings": settings, "pools": table, "verdict": decide(table)}
