"""Pool benchmarks: our closed loop on a measured table, Liang et al. (2021) protocol.

Each campaign is a real :class:`~loop.campaign.Campaign` with its own SQLite ledger, a
:class:`~oracles.simulated.DatasetLab` answering with the mean of each design's replicates, 2 random
initial designs and then batches of ``batch_size`` (1 in the protocol). The pool is scaled once over all
its designs (the surrogate's ``Normalize`` uses the pool's range). The order in which designs were
measured is read back from the ledger, turned into a top-count row and summarised by
:mod:`loop.bench.metrics`.

A campaign is stopped by the harness, not by the algorithm, once it has found every good design (its
Top% can no longer change, so it is padded with Top% = 1) or after ``max_experiments``.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from loop.bench import metrics
from loop.campaign import Campaign
from loop.config import CampaignConfig, parse_config
from loop.ledger import Ledger
from loop.pool import CandidatePool, read_table
from surrogates.base import Surrogate

BENCH_SEED_BASE = 1000
"""Campaign ``k`` runs with campaign seed ``BENCH_SEED_BASE + k``."""


@dataclass(frozen=True)
class PoolProblem:
    """A benchmark pool: the designs of a table and which of them are good.

    Args:
        data: CSV file, one row per measurement; rows with identical inputs are replicates.
        objective: Objective column.
        maximize: ``True`` if larger objective values are better.
        inputs: Input columns.
        pool: The pool of distinct designs, in table order.
        values: ``N``-dim objective of each design (mean over its replicates).
        good_mask: ``N``-dim boolean, ``True`` for the ``good_count`` best designs.
    """

    data: Path
    objective: str
    maximize: bool
    inputs: tuple[str, ...]
    pool: CandidatePool
    values: NDArray[np.float64]
    good_mask: NDArray[np.bool_]

    @property
    def pool_size(self) -> int:
        return len(self.pool)

    @property
    def good_count(self) -> int:
        return int(self.good_mask.sum())

    @classmethod
    def from_csv(
        cls,
        data: str | Path,
        objective: str,
        maximize: bool,
        good_fraction: float,
        inputs: Sequence[str] | None = None,
    ) -> PoolProblem:
        """Read a table and mark its ``ceil(good_fraction * N)`` best designs as good.

        Args:
            data: CSV file.
            objective: Objective column.
            maximize: Direction of the objective.
            good_fraction: Fraction of designs that count as good, in ``(0, 1]``.
            inputs: Input columns; default: every column but the objective.

        Raises:
            ValueError: If ``good_fraction`` is out of range, the objective is missing or not numeric.
        """
        if not 0 < good_fraction <= 1:
            raise ValueError(f"good fraction must be in (0, 1], got {good_fraction}")
        path = Path(data).resolve()
        table = read_table(path)
        if objective not in table.columns:
            raise ValueError(f"objective column {objective!r} not in table columns {list(table.columns)}")
        if not pd.api.types.is_numeric_dtype(table[objective]):
            raise ValueError(f"objective column {objective!r} is not numeric")
        names = tuple(inputs) if inputs else tuple(c for c in table.columns if c != objective)
        if objective in names:
            raise ValueError(f"objective column {objective!r} cannot also be an input")
        pool = CandidatePool.from_frame(table, names)
        means = table.groupby(list(names), sort=False)[objective].mean()
        keyed = {
            pool.space.candidate(dict(zip(names, k, strict=True))).id: v for k, v in _items(means, names)
        }
        values = np.asarray([keyed[cid] for cid in pool.ids], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"objective column {objective!r} has missing or infinite values")
        good = math.ceil(good_fraction * len(pool) - 1e-9)
        order = np.argsort(-values if maximize else values, kind="stable")
        mask = np.zeros(len(pool), dtype=bool)
        mask[order[:good]] = True
        return cls(path, objective, maximize, names, pool, values, mask)


def _items(means: pd.Series, names: Sequence[str]) -> list[tuple[tuple[Any, ...], float]]:
    """(input tuple, mean) pairs of a groupby result, with one-input keys made tuples."""
    keys = [k if isinstance(k, tuple) else (k,) for k in means.index]
    keys = [tuple(v.item() if hasattr(v, "item") else v for v in k) for k in keys]
    assert all(len(k) == len(names) for k in keys)
    return list(zip(keys, means.to_numpy(dtype=float).tolist(), strict=True))


def campaign_config(
    problem: PoolProblem,
    acquisition: str,
    seed: int,
    ledger: str | Path,
    batch_size: int = 1,
    initial_designs: int = 2,
    max_experiments: int | None = None,
    surrogate: dict[str, Any] | None = None,
    acquisition_options: dict[str, Any] | None = None,
) -> CampaignConfig:
    """The campaign configuration of one benchmark campaign.

    Args:
        problem: The pool.
        acquisition: Acquisition type (``ucb``, ``qlognei``, ``random``...).
        seed: Campaign seed (initial designs, Monte-Carlo samples).
        ledger: SQLite file of the campaign.
        batch_size: Designs per cycle after the initial ones.
        initial_designs: Random designs before the first fit.
        max_experiments: Budget; default: the whole pool.
        surrogate: Extra ``[surrogate]`` keys (kernel, lengthscale_prior, noise, warm_start).
        acquisition_options: Extra ``[acquisition]`` keys (beta, chunk_size...).
    """
    return parse_config(
        {
            "campaign": {"name": f"bench-{acquisition}-{seed}", "seed": seed, "ledger": str(ledger)},
            "space": {"pool": {"path": str(problem.data), "inputs": list(problem.inputs)}},
            "objectives": [
                {"name": problem.objective, "direction": "maximize" if problem.maximize else "minimize"}
            ],
            "surrogate": dict(surrogate or {}),
            "acquisition": {
                "type": acquisition,
                "initial_designs": initial_designs,
                "batch_size": batch_size,
                **(acquisition_options or {}),
            },
            "oracle": {"type": "dataset", "path": str(problem.data), "mode": "mean"},
            "stopping": {"max_experiments": max_experiments or problem.pool_size},
        },
        source="bench pool",
    )


class _TimedCampaign(Campaign):
    """A campaign that records how long each decision (fit + propose) takes."""

    decision_seconds: list[float]
    _started: float

    def fit(self, cycle: int) -> Surrogate | None:
        self._started = time.perf_counter()
        if self.acquisition.kind == "random":
            return None  # random picks ignore the model: skip fitting one
        return super().fit(cycle)

    def propose(self, surrogate: Surrogate | None, cycle: int) -> Any:
        proposals = super().propose(surrogate, cycle)
        if surrogate is not None:
            self.decision_seconds.append(time.perf_counter() - self._started)
        return proposals


@dataclass(frozen=True)
class CampaignTrace:
    """One finished benchmark campaign.

    Args:
        chosen: Pool indices of the measured designs, in the order they were measured.
        topcount: Cumulative number of good designs after each experiment.
        decision_seconds: Wall time of each model-based decision (fit + score the pool + pick).
        cycle_seconds: Wall time of each cycle (decision, ledger writes and the simulated oracle).
    """

    chosen: list[int]
    topcount: NDArray[np.int64]
    decision_seconds: list[float]
    cycle_seconds: list[float]


def run_campaign(
    problem: PoolProblem, config: CampaignConfig, max_experiments: int | None = None
) -> CampaignTrace:
    """Run one campaign until it has found every good design, or spent ``max_experiments``.

    Args:
        problem: The pool (and its good designs).
        config: The campaign configuration (see :func:`campaign_config`).
        max_experiments: Harness budget; default: the configuration's.
    """
    budget = max_experiments or config.stopping.max_experiments or problem.pool_size
    campaign = _TimedCampaign(config, ledger=Ledger(config.ledger_location))
    campaign.decision_seconds = []
    cycle_seconds: list[float] = []
    position = {cid: i for i, cid in enumerate(problem.pool.ids)}
    try:
        found = 0
        done: list[int] = []
        while found < problem.good_count and len(done) < budget:
            started = time.perf_counter()
            report = campaign.run(max_cycles=1)
            cycle_seconds.append(time.perf_counter() - started)
            done = [position[e.candidate_id] for e in campaign.ledger.evaluations(campaign.id, ["done"])]
            found = int(problem.good_mask[done].sum())
            if report.stop_reason is not None or report.cycles_run == 0:
                break
    finally:
        campaign.close()
    done = done[:budget]
    return CampaignTrace(
        done,
        metrics.topcount_from_choices(np.asarray(done, dtype=np.int64), problem.good_mask),
        campaign.decision_seconds,
        cycle_seconds,
    )


@dataclass
class PoolBenchmark:
    """Campaigns of one strategy on one pool and their Liang et al. summary."""

    label: str
    traces: list[CampaignTrace]
    summary: dict[str, Any]
    median: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    extra: dict[str, Any] = field(default_factory=dict)


def summarize_traces(
    label: str, traces: Sequence[CampaignTrace], problem: PoolProblem, seeds: Sequence[int]
) -> PoolBenchmark:
    """Liang et al. summary of campaigns, plus ``seconds_per_decision`` and per-campaign numbers.

    Rows of campaigns that found every good design are padded with Top% = 1 to the pool size; if some
    campaign stopped at its budget first, every row is cut or padded to that budget.
    """
    good = problem.good_count
    rows = [t.topcount for t in traces]
    finished = all(r.size > 0 and r[-1] == good for r in rows)
    width = problem.pool_size if finished else max(r.size for r in rows if r.size == 0 or r[-1] != good)
    counts = metrics.pad_topcounts([r[:width] for r in rows], good, width)
    summary = metrics.summarize(counts, problem.pool_size, seeds, good_count=good)
    median, low, high = median_curves(counts, good, seeds)
    decisions = [s for t in traces for s in t.decision_seconds]
    cycles = [s for t in traces for s in t.cycle_seconds]
    summary["seconds_per_decision"] = statistics.fmean(decisions) if decisions else None
    summary["seconds_per_decision_median"] = statistics.median(decisions) if decisions else None
    summary["seconds_per_cycle"] = statistics.fmean(cycles) if cycles else None
    per_campaign = [metrics.experiments_to_reach(r / good, 0.8) for r in counts]
    summary["per_campaign_cycles_to_top80"] = per_campaign
    return PoolBenchmark(label, list(traces), summary, median, low, high)


def median_curves(
    topcount: NDArray[np.int64] | Sequence[NDArray[np.int64]], good_count: int, seeds: Sequence[int]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Median and 5/95% Top% curves of campaigns (rows padded to the longest with Top% = 1).

    Args:
        topcount: ``n_campaigns x n_experiments`` counts, or ragged rows of finished campaigns.
        good_count: Number of good designs.
        seeds: Aggregation seeds.

    Returns:
        ``(median, low, high)``, each ``n_experiments``-dim.
    """
    counts = metrics.pad_topcounts(list(topcount), good_count)
    return metrics.median_band(metrics.fold_averaged_curves(metrics.top_percent(counts, good_count), seeds))


def run_pool_benchmark(
    problem: PoolProblem,
    acquisition: str,
    campaigns: int,
    seeds: Sequence[int],
    batch_size: int = 1,
    max_experiments: int | None = None,
    surrogate: dict[str, Any] | None = None,
    acquisition_options: dict[str, Any] | None = None,
    workdir: str | Path | None = None,
    on_campaign: Callable[[int, CampaignTrace], None] | None = None,
) -> PoolBenchmark:
    """Run ``campaigns`` campaigns of one strategy (seeds ``BENCH_SEED_BASE + k``) and summarise them.

    Args:
        problem: The pool.
        acquisition: Acquisition type.
        campaigns: Number of campaigns ``K``.
        seeds: Aggregation seeds of the metrics.
        batch_size: Designs per cycle.
        max_experiments: Budget per campaign; default: the whole pool.
        surrogate: Extra ``[surrogate]`` keys.
        acquisition_options: Extra ``[acquisition]`` keys.
        workdir: Folder for the ledgers; default: a temporary one, removed afterwards.
        on_campaign: Called after each campaign with its index and trace.

    Raises:
        ValueError: If ``campaigns < 1``.
    """
    if campaigns < 1:
        raise ValueError(f"campaigns must be >= 1, got {campaigns}")
    if acquisition == "random":
        # A uniformly random order of the pool is the same whatever the batch size: larger batches
        # only save ledger round-trips.
        batch_size = max(batch_size, math.ceil(problem.pool_size / 100))
    traces = []
    with tempfile.TemporaryDirectory(prefix="alloop-bench-", dir=workdir) as folder:
        for k in range(campaigns):
            config = campaign_config(
                problem,
                acquisition,
                seed=BENCH_SEED_BASE + k,
                ledger=Path(folder) / f"{acquisition}-{k}.db",
                batch_size=batch_size,
                max_experiments=max_experiments,
                surrogate=surrogate,
                acquisition_options=acquisition_options,
            )
            trace = run_campaign(problem, config, max_experiments)
            traces.append(trace)
            if on_campaign is not None:
                on_campaign(k, trace)
    return summarize_traces(acquisition, traces, problem, seeds)


def plot_top_percent(
    path: str | Path,
    problem: PoolProblem,
    curves: Sequence[tuple[str, NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.float64] | None]],
    title: str = "",
) -> None:
    """Plot Top% against experiments (log x) with a dashed line at 0.8, and the random curve ``i / N``.

    Args:
        path: Image file to write.
        problem: The pool (for ``N`` and the good count).
        curves: ``(label, median, low, high)`` per strategy; bands may be ``None``.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, median, low, high in curves:
        x = np.arange(1, median.size + 1)
        (line,) = ax.plot(x, median, label=label)
        if low is not None and high is not None:
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    x = np.arange(1, problem.pool_size + 1)
    ax.plot(x, metrics.random_baseline(problem.pool_size), color="grey", label="random (i/N)")
    ax.axhline(0.8, color="black", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(1, problem.pool_size)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("experiments")
    ax.set_ylabel(f"Top% (fraction of the {problem.good_count} best found)")
    ax.set_title(title or f"{problem.data.name}: {problem.objective}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
