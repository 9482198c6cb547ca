"""``alloop bench transfer``: a new OER plate with a past plate as source, against a cold start.

Two plates of Rohr et al. (2020) share Fe, Co and Mn; both are encoded over the union of
their elements (shared features: a composition is a composition), so a finished campaign on
one plate can inform a new one on the other. The source is a past campaign's results: a
seeded random sample of the source plate. The unrelated source is the same sample with its
overpotentials shuffled across compositions (data that says nothing about the target), which
the negative-transfer guard of :class:`~surrogates.transfer.TransferGP` must not let make
things worse than a cold start. Every arm starts from the same random designs per seed and
picks by lower confidence bound (minimise overpotential) over the unmeasured compositions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import pandas as pd
import torch
from botorch.utils.datasets import SupervisedDataset
from scipy.stats import spearmanr
from torch import Tensor

from loop.acquisition import Acquisition
from surrogates.base import Surrogate
from surrogates.gp import GPSurrogate
from surrogates.transfer import TransferGP

ARMS = ("cold", "transfer", "unrelated")


def read_plate(path: Path) -> tuple[list[str], pd.DataFrame]:
    """A plate's element names and its rows (element fractions, ``overpotential``)."""
    frame = pd.read_csv(path)
    elements = [c.removesuffix("_load") for c in frame.columns if c.endswith("_load")]
    frame = frame.rename(columns={f"{e}_load": e for e in elements})
    return elements, frame.groupby(elements, as_index=False)["overpotential"].mean()


def encode(frame: pd.DataFrame, features: list[str]) -> tuple[Tensor, Tensor]:
    """``n x len(features)`` fractions (0 for elements the plate lacks) and ``n x 1`` outcomes."""
    X = torch.tensor(frame.reindex(columns=features, fill_value=0.0).to_numpy(), dtype=torch.double)
    return X, torch.tensor(frame[["overpotential"]].to_numpy(), dtype=torch.double)


def as_dataset(X: Tensor, Y: Tensor) -> SupervisedDataset:
    return SupervisedDataset(X, Y, feature_names=[f"x{i}" for i in range(X.shape[-1])], outcome_names=["y"])


def make_surrogate(bounds: Tensor, name: str, source: SupervisedDataset | None) -> Surrogate:
    """The cold-start GP, or a guarded transfer GP over ``source``."""
    return GPSurrogate(input_bounds=bounds) if source is None else TransferGP([(name, source)], bounds)


def pool_campaign(
    X: Tensor,
    y: Tensor,
    make: Callable[[], Surrogate],
    initial: int,
    budget: int,
    seed: int,
    batch: int = 1,
    done: Callable[[list[int]], bool] = lambda measured: False,
    on_fit: Callable[[Surrogate], None] | None = None,
) -> list[int]:
    """One campaign on a pool (``y`` minimised): ``initial`` random rows (the same for every
    arm of a seed), then batches picked by lower confidence bound over the unmeasured rows,
    until ``done(measured)`` or ``budget`` rows; ``on_fit`` sees each round's fitted surrogate.
    Returns the rows measured, in order."""
    order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    measured = order[:initial].tolist()
    acquisition = Acquisition("ucb", [-1.0])
    surrogate = make()
    while not done(measured) and len(measured) < budget:
        rows = torch.tensor(measured)
        torch.manual_seed(seed * 1000 + len(measured))
        surrogate.fit(as_dataset(X[rows], y[rows]))
        if on_fit is not None:
            on_fit(surrogate)
        free = torch.ones(X.shape[0], dtype=torch.bool)
        free[rows] = False
        left = torch.nonzero(free).reshape(-1)
        q = min(batch, budget - len(measured))
        for pick in acquisition.select_from_pool(surrogate, X[left], q, X[rows], y[rows], None, seed):
            assert pick.index is not None
            measured.append(int(left[pick.index]))
    return measured


def experiments_to_find(
    X: Tensor,
    y: Tensor,
    make: Callable[[], Surrogate],
    good: set[int],
    wanted: int,
    initial: int,
    budget: int,
    seed: int,
    on_fit: Callable[[Surrogate], None] | None = None,
) -> tuple[int | None, int, list[int]]:
    """One campaign on a pool (``y`` minimised): experiments until ``wanted`` of the ``good``
    rows are measured (``None`` past ``budget``), how many were found by then, and the rows
    measured."""

    def found_enough(measured: list[int]) -> bool:
        return len(good.intersection(measured)) >= wanted

    measured = pool_campaign(X, y, make, initial, budget, seed, done=found_enough, on_fit=on_fit)
    found = len(good.intersection(measured))
    return (len(measured) if found >= wanted else None), found, measured


class SourceRounds:
    """An ``on_fit`` hook of :func:`pool_campaign`: in which rounds a transfer GP used a source."""

    def __init__(self) -> None:
        self.used: list[bool] = []

    def __call__(self, surrogate: Surrogate) -> None:
        self.used.append(isinstance(surrogate, TransferGP) and bool(surrogate.used))

    def counts(self) -> list[int]:
        """``[rounds that used a source, rounds]``."""
        return [sum(self.used), len(self.used)]


def source_ranking(
    X: Tensor, y: Tensor, source: SupervisedDataset, bounds: Tensor, good: set[int], wanted: int
) -> tuple[dict[str, Any], Tensor]:
    """What a source alone says about the target pool (``y`` minimised): a GP fitted to the
    source predicts every target row, and the rows are ranked by that prediction.

    Returns:
        ``spearman``: rank correlation of the prediction with the target's outcomes;
        ``good_ranks``: the 1-based ranks of the ``good`` rows; ``experiments_to_find``: the
        experiments a search measuring in the source's order would need to find ``wanted``
        of them (the ``wanted``-th smallest rank), to set beside a campaign's count. And
        each row's rank (``n`` 1-based ranks, best predicted first).
    """
    predicted, _ = GPSurrogate(input_bounds=bounds).fit(source).predict(X)
    predicted = predicted.reshape(-1)
    rank = torch.empty(X.shape[0], dtype=torch.long)
    rank[torch.argsort(predicted, stable=True)] = torch.arange(1, X.shape[0] + 1)
    good_ranks = sorted(int(rank[i]) for i in good)
    summary = {
        "spearman": round(float(spearmanr(predicted.numpy(), y.reshape(-1).numpy()).statistic), 3),
        "good_ranks": good_ranks,
        "experiments_to_find": good_ranks[wanted - 1],
    }
    return summary, rank


def by_quarter(rank: Tensor, rows: list[int]) -> list[int]:
    """How many of ``rows`` fall in each quarter of ``rank`` (1-based ranks of all ``n`` rows),
    the best-ranked quarter first: where a campaign spent its experiments, in a source's eyes."""
    quarter = ((rank[torch.tensor(rows, dtype=torch.long)] - 1) * 4) // rank.numel()
    return torch.bincount(quarter, minlength=4).tolist()


def run(
    target: Path,
    source: Path,
    seeds: int,
    source_size: int = 100,
    budget: int = 150,
    initial: int = 2,
    on_run: Callable[[str, int, dict[str, Any]], None] | None = None,
    arms: tuple[str, ...] = ARMS,
    first_seed: int = 0,
) -> dict[str, Any]:
    """``arms`` over seeds ``first_seed..first_seed+seeds-1``, and the decision rule of
    benchmarks/RESULTS.md where all three arms ran. Beside them, :func:`source_ranking` of the
    whole source plate and of each seed's source sample (no arms: that alone), and where each
    campaign's experiments fell in the whole plate's order (:func:`by_quarter`)."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    started = time.perf_counter()
    target_elements, target_frame = read_plate(target)
    source_elements, source_frame = read_plate(source)
    features = sorted(set(target_elements) | set(source_elements))
    X, y = encode(target_frame, features)
    good_count = math.ceil(0.01 * X.shape[0])
    good = set(torch.argsort(y.reshape(-1))[:good_count].tolist())
    wanted = math.ceil(0.8 * good_count)
    bounds = torch.stack([torch.zeros(len(features)), torch.ones(len(features))]).double()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    whole_plate, rank = source_ranking(
        X, y, as_dataset(*encode(source_frame, features)), bounds, good, wanted
    )
    sample_ranks = []
    for seed in range(first_seed, first_seed + seeds):
        sample = source_frame.sample(n=source_size, random_state=seed)
        sX, sY = encode(sample, features)
        sample_ranks.append(source_ranking(X, y, as_dataset(sX, sY), bounds, good, wanted)[0])
        shuffled = sY[torch.randperm(sY.shape[0], generator=torch.Generator().manual_seed(seed))]
        sources = {"cold": None, "transfer": as_dataset(sX, sY), "unrelated": as_dataset(sX, shuffled)}
        for arm in arms:
            data = sources[arm]
            tic = time.perf_counter()
            make = partial(make_surrogate, bounds, arm, data)
            rounds = SourceRounds()
            n, found, measured = experiments_to_find(X, y, make, good, wanted, initial, budget, seed, rounds)
            outcome = {
                "experiments": n,
                "found": found,
                "by_source_quarter": by_quarter(rank, measured),
                "source_rounds": rounds.counts(),
                "seconds": round(time.perf_counter() - tic, 1),
            }
            runs[arm].append(outcome)
            if on_run is not None:
                on_run(arm, seed, outcome)

    def typical(arm: str) -> float:  # "not reached" counts as past the budget
        return median(budget + 1 if r["experiments"] is None else r["experiments"] for r in runs[arm])

    result: dict[str, Any] = {
        "benchmark": "transfer",
        "target": target.name,
        "source": source.name,
        "features": features,
        "pool": X.shape[0],
        "good": good_count,
        "wanted": wanted,
        "seeds": list(range(first_seed, first_seed + seeds)),
        "source_size": source_size,
        "budget": budget,
        "arms": {
            arm: {
                "experiments_median": typical(arm),
                "experiments": [r["experiments"] for r in rs],
                "found": [r["found"] for r in rs],
                "by_source_quarter": [r["by_source_quarter"] for r in rs],
                "source_rounds": [r["source_rounds"] for r in rs],
            }
            for arm, rs in runs.items()
        },
        "source_ranking": {
            "whole_plate": whole_plate,
            "samples": {key: [r[key] for r in sample_ranks] for key in ("spearman", "experiments_to_find")},
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if set(ARMS) <= set(arms):
        cold = typical("cold")
        result["fewer_experiments_fraction"] = 1 - typical("transfer") / cold
        result["goal_met"] = typical("transfer") <= 0.7 * cold and typical("unrelated") <= cold
    return result
