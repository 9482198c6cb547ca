"""``alloop bench transfer-hartmann``: BayBE's shifted-Hartmann transfer benchmark, reproduced.

BayBE's transfer-learning benchmark (``benchmarks/domains/hartmann/convergence_tl.py`` in its
repository) optimises the 3-D Hartmann function (minimised) on a grid of 20 points per axis of
the unit cube, with a past campaign on a related function as the source: the same Hartmann with
its first input shifted by 0.2 and Gaussian noise of standard deviation 0.15, measured at 1%, 5%
or 10% of the grid; batches of 2, 25 rounds. Here the same problem runs through alloop's
:class:`~surrogates.transfer.TransferGP` (guard on) against the cold-start GP, picking by lower
confidence bound over the unmeasured grid points, plus BayBE's inverted source (the negated,
noisy Hartmann) as the check that a misleading source does not make things worse than a cold
start. Every arm of a seed starts from the same random designs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from statistics import median
from typing import Any, Literal

import torch
from botorch.test_functions.synthetic import Hartmann
from torch import Tensor

from loop.bench.transfer import SourceRounds, as_dataset, make_surrogate, pool_campaign

POINTS_PER_AXIS = 20
SHIFT = (0.2, 0.0, 0.0)
SOURCE_NOISE = 0.15
BATCH = 2
BUDGET = 50
"""Target evaluations per campaign: 2 random designs, then 24 batches of 2."""
INITIAL = 2
REGRET = 0.05
"""A campaign has found the optimum once its best is within this of the grid's minimum."""
ARMS: dict[str, tuple[Literal["shifted", "inverted"], float] | None] = {
    "cold": None,
    "shifted_1": ("shifted", 0.01),
    "shifted_5": ("shifted", 0.05),
    "shifted_10": ("shifted", 0.10),
    "inverted_10": ("inverted", 0.10),
}
"""Each arm's source: kind and fraction of the grid measured (``None``: a cold start)."""


def grid() -> Tensor:
    """``8000 x 3`` points: 20 evenly spaced values per axis of the unit cube."""
    axis = torch.linspace(0.0, 1.0, POINTS_PER_AXIS, dtype=torch.double)
    return torch.cartesian_prod(axis, axis, axis)


def hartmann(X: Tensor) -> Tensor:
    """``n x 1`` values of the 3-D Hartmann function, on the unit cube widened by the shift
    (the function is defined beyond it; BoTorch checks inputs against the bounds it is given)."""
    bounds = [(min(0.0, s), 1.0 + max(0.0, s)) for s in SHIFT]
    return Hartmann(dim=3, bounds=bounds).to(X).evaluate_true(X).unsqueeze(-1)


def source_values(X: Tensor, kind: Literal["shifted", "inverted"], seed: int) -> Tensor:
    """``n x 1`` measurements of a past campaign: the shifted or the negated Hartmann, with noise."""
    draws = torch.randn(X.shape[0], 1, generator=torch.Generator().manual_seed(seed), dtype=X.dtype)
    noise = SOURCE_NOISE * draws
    if kind == "shifted":
        return hartmann(X + torch.tensor(SHIFT, dtype=X.dtype)) + noise
    return -hartmann(X) + noise


def best_so_far(y: Tensor, measured: list[int]) -> list[float]:
    """The best (lowest) value after each evaluation of the campaign."""
    return torch.cummin(y.reshape(-1)[measured], dim=0).values.tolist()


def run(
    seeds: int,
    arms: tuple[str, ...] = tuple(ARMS),
    on_run: Callable[[str, int, dict[str, Any]], None] | None = None,
    first_seed: int = 0,
) -> dict[str, Any]:
    """Every arm over seeds ``first_seed..first_seed+seeds-1`` and the decision rule of
    benchmarks/RESULTS.md."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    started = time.perf_counter()
    X = grid()
    y = hartmann(X)
    minimum = float(y.min())
    bounds = torch.stack([torch.zeros(3), torch.ones(3)]).double()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for seed in range(first_seed, first_seed + seeds):
        for arm in arms:
            spec = ARMS[arm]
            data = None
            if spec is not None:
                kind, fraction = spec
                rows = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
                sX = X[rows[: round(fraction * X.shape[0])]]
                data = as_dataset(sX, source_values(sX, kind, seed))
            tic = time.perf_counter()
            rounds = SourceRounds()
            make = partial(make_surrogate, bounds, arm, data)
            # The campaign's own seed, so that its random designs are not the source's first rows.
            measured = pool_campaign(X, y, make, INITIAL, BUDGET, 10_000 + seed, batch=BATCH, on_fit=rounds)
            curve = best_so_far(y, measured)
            reached = next((i + 1 for i, best in enumerate(curve) if best - minimum <= REGRET), None)
            outcome = {
                "experiments": reached,
                "best": {n: round(curve[n - 1], 4) for n in (10, 20, BUDGET)},
                "source_rounds": rounds.counts(),
                "seconds": round(time.perf_counter() - tic, 1),
            }
            runs[arm].append(outcome)
            if on_run is not None:
                on_run(arm, seed, outcome)

    def typical(arm: str) -> float:  # "not reached" counts as past the budget
        return median(BUDGET + 1 if r["experiments"] is None else r["experiments"] for r in runs[arm])

    summary: dict[str, Any] = {
        arm: {
            "experiments_median": typical(arm),
            "experiments": [r["experiments"] for r in rs],
            "best_median": {n: median(r["best"][n] for r in rs) for n in (10, 20, BUDGET)},
            "source_rounds": [r["source_rounds"] for r in rs],
            "seconds_median": median(r["seconds"] for r in rs),
        }
        for arm, rs in runs.items()
    }
    result: dict[str, Any] = {
        "benchmark": "transfer-hartmann",
        "grid": X.shape[0],
        "minimum": round(minimum, 4),
        "regret": REGRET,
        "budget": BUDGET,
        "batch": BATCH,
        "seeds": list(range(first_seed, first_seed + seeds)),
        "arms": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if {"cold", "shifted_10", "inverted_10"} <= set(arms):
        cold = typical("cold")
        result["fewer_experiments_fraction"] = 1 - typical("shifted_10") / cold
        result["goal_met"] = typical("shifted_10") <= 0.7 * cold and typical("inverted_10") <= cold
    return result
