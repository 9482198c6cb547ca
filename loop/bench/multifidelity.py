"""``alloop bench multifidelity``: cost to reach a regret target, multi-fidelity against
single-fidelity qLogNEI and the fixed funnel, at equal total cost (benchmarks/RESULTS.md,
"Multi-fidelity", holds the protocol and decision rule).

The loop here is the campaign's decision loop without the ledger: the same surrogates
(:class:`~surrogates.multifidelity.MultiFidelityGP`, :class:`~surrogates.gp.GPSurrogate`) and
the same policies (:class:`~loop.fidelity_acquisition.FidelityPolicy`,
:class:`~loop.acquisition.Acquisition`), over a pool of random designs of BoTorch's
``AugmentedBranin`` and ``AugmentedHartmann``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from botorch.test_functions.multi_fidelity import AugmentedBranin, AugmentedHartmann
from botorch.test_functions.synthetic import SyntheticTestFunction
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.acquisition import Acquisition
from loop.bench.discovery import pool_bounds
from loop.fidelity import Fidelities
from loop.fidelity_acquisition import FidelityPolicy, PairState
from loop.hull_acquisition import HullTarget
from surrogates.gp import GPSurrogate
from surrogates.multifidelity import MultiFidelityGP

PROBLEMS: dict[str, Callable[[], SyntheticTestFunction]] = {
    "branin": lambda: AugmentedBranin(negate=True),
    "hartmann": lambda: AugmentedHartmann(negate=True),
}
METHODS = ("single", "mf_ucb", "funnel", "mf_mes")
#: Fidelity name → (the function's fidelity input, cost per evaluation).
FIDELITIES = {"cheap": (0.5, 0.1), "target": (1.0, 1.0)}


@dataclass(frozen=True)
class Settings:
    """The protocol's knobs (defaults: benchmarks/RESULTS.md)."""

    pool_size: int = 128
    budget: float = 20.0
    initial_designs: int = 4
    single_batch: int = 2
    mf_batch: int = 4
    regret_fraction: float = 0.05
    max_iterations: int = 50


@dataclass(frozen=True)
class Run:
    """One method on one seed: cost spent and target evaluations when the target was first
    reached (infinite where it was not), total cost, and the recall of the pool's good
    designs at the end (problems that have a set of them)."""

    cost_to_target: float
    target_evaluations: float
    total_cost: float
    final_recall: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: None if v is None or math.isinf(v) else v for k, v in vars(self).items()}


@dataclass(frozen=True)
class PoolProblem:
    """A finite pool measured at named fidelities: what a method sees of a problem.

    Attributes:
        X: ``N x d`` design inputs.
        fidelities: Names, costs and the target.
        measure: ``(row, fidelity)`` → the measured objective value, in its own sign.
        weight: ``+1`` maximise, ``-1`` minimise.
        hit: ``(row, value)`` → whether this target-fidelity measurement is one of the good designs.
        needed: Good designs measured at the target fidelity that reach the target.
        good: How many good designs the pool holds (``None``: recall is not reported).
        hull: The hull target of a structure pool (hull-aware policies).
    """

    X: Tensor
    fidelities: Fidelities
    measure: Callable[[int, str], float]
    weight: float
    hit: Callable[[int, float], bool]
    needed: int = 1
    good: int | None = None
    hull: HullTarget | None = None


def _pool(problem: SyntheticTestFunction, size: int, seed: int) -> Tensor:
    bounds: Tensor = problem.bounds[:, :-1]  # type: ignore[index]  # a registered buffer
    unit = torch.rand(
        size, bounds.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.double
    )
    return bounds[0] + unit * (bounds[1] - bounds[0])


def _measure(problem: SyntheticTestFunction, X: Tensor, fidelity: str) -> Tensor:
    column = torch.full((X.shape[0], 1), FIDELITIES[fidelity][0], dtype=X.dtype)
    return problem(torch.cat([X, column], dim=-1))


def _dataset(X: Tensor, values: list[float]) -> SupervisedDataset:
    Y = torch.tensor(values, dtype=torch.double).unsqueeze(-1)
    return SupervisedDataset(X, Y, feature_names=[f"x{i}" for i in range(X.shape[-1])], outcome_names=["y"])


class Trace:
    """Spend and good designs found at the target fidelity as measurements come in."""

    def __init__(self, problem: PoolProblem) -> None:
        self.problem, self.cost, self.target_evaluations, self.hits = problem, 0.0, 0, 0
        self.reached: tuple[float, int] | None = None

    def add(self, row: int, fidelity: str, value: float) -> None:
        self.cost += self.problem.fidelities[fidelity].cost
        if fidelity == self.problem.fidelities.target:
            self.target_evaluations += 1
            self.hits += self.problem.hit(row, value)
            if self.reached is None and self.hits >= self.problem.needed:
                self.reached = (self.cost, self.target_evaluations)

    def result(self) -> Run:
        good = self.problem.good
        recall = None if good is None else self.hits / good if good else 0.0
        cost, evaluations = self.reached or (math.inf, math.inf)
        return Run(cost, evaluations, self.cost, recall)


def _single(problem: PoolProblem, trace: Trace, settings: Settings, seed: int) -> Run:
    X, target = problem.X, problem.fidelities.target
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    surrogate = GPSurrogate(bounds, max_iterations=settings.max_iterations)
    acquisition = Acquisition("qlognei", [1.0])
    free = list(range(X.shape[0]))
    rows: list[int] = []
    values: list[float] = []
    generator = torch.Generator().manual_seed(seed)
    cycle = 0
    while trace.cost + 1.0 <= settings.budget + 1e-9 and free:
        q = int(min(settings.single_batch, (settings.budget - trace.cost + 1e-9) // 1.0, len(free)))
        if len(rows) < settings.initial_designs:
            chosen = [
                free[i] for i in torch.randperm(len(free), generator=generator)[: settings.initial_designs]
            ]
        else:
            Y = torch.tensor(values, dtype=torch.double).unsqueeze(-1)
            surrogate.fit(_dataset(X[rows], values))
            picks = acquisition.select_from_pool(surrogate, X[free], q, X[rows], Y, None, seed + cycle)
            chosen = [free[p.index] for p in picks if p.index is not None]
        for row in chosen:
            free.remove(row)
            rows.append(row)
            values.append(problem.measure(row, target))
            trace.add(row, target, values[-1])
        cycle += 1
    return trace.result()


def run_multi(kind: str, problem: PoolProblem, settings: Settings, seed: int) -> Run:
    """A multi-fidelity policy (or the funnel) on the pool, until the budget is spent:
    ``initial_designs`` pairs, then ``mf_batch`` per round, each measured at once."""
    X, fidelities, trace = problem.X, problem.fidelities, Trace(problem)
    policy = FidelityPolicy(kind, fidelities, problem.weight, hull=problem.hull)
    surrogate = MultiFidelityGP(pool_bounds(X), max_iterations=settings.max_iterations)
    names = fidelities.names
    state = PairState(
        torch.ones(X.shape[0], len(names), dtype=torch.bool),
        torch.zeros(X.shape[0], len(names), dtype=torch.bool),
        torch.full((X.shape[0], len(names)), math.nan, dtype=torch.double),
    )
    inputs: list[Tensor] = []
    values: list[float] = []
    cycle = 0
    while trace.cost + min(f.cost for f in fidelities.levels) <= settings.budget + 1e-9:
        model = None
        if policy.needs_model and len(values) >= settings.initial_designs:
            model = surrogate.fit(_dataset(torch.stack(inputs), values))
        q = settings.initial_designs if not values else settings.mf_batch
        picks = policy.select(model, X, state, q, None, seed + cycle)
        spent_any = False
        for pick in picks:
            cost = fidelities[pick.fidelity].cost
            if trace.cost + cost > settings.budget + 1e-9:
                continue
            value = problem.measure(pick.row, pick.fidelity)
            level = names.index(pick.fidelity)
            state.open[pick.row, level] = False
            state.values[pick.row, level] = problem.weight * value  # signed, as a campaign's scores
            inputs.append(policy.augment(X[pick.row : pick.row + 1], pick.fidelity)[0])
            values.append(value)
            trace.add(pick.row, pick.fidelity, value)
            spent_any = True
        if not spent_any:
            break
        cycle += 1
    return trace.result()


def analytic_problem(name: str, settings: Settings, seed: int) -> PoolProblem:
    """One seed's pool of random designs of the test function ``name``; a design is good
    within ``regret_fraction`` of the way from the pool's best to its median (at the target)."""
    function = PROBLEMS[name]()
    X = _pool(function, settings.pool_size, seed)
    truth = _measure(function, X, "target")
    best, median = float(truth.max()), float(truth.median())
    threshold = best - settings.regret_fraction * (best - median)
    return PoolProblem(
        X,
        Fidelities.from_costs({name: cost for name, (_, cost) in FIDELITIES.items()}, "target"),
        lambda row, fidelity: float(_measure(function, X[row : row + 1], fidelity)[0]),
        1.0,
        lambda row, value: value >= threshold,
    )


def run_one(problem_name: str, method: str, seed: int, settings: Settings = Settings()) -> Run:
    """One method on one seed's pool."""
    torch.manual_seed(seed)
    problem = analytic_problem(problem_name, settings, seed)
    if method == "single":
        return _single(problem, Trace(problem), settings, seed)
    return run_multi(method, problem, settings, seed)


def run_benchmark(
    problems: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    settings: Settings = Settings(),
    progress: Callable[[str, str, int, Run], None] | None = None,
) -> dict[str, Any]:
    """Every method on every seed of every problem, with the medians and the decision rule."""
    summary: dict[str, Any] = {"settings": vars(settings), "fidelities": FIDELITIES, "problems": {}}
    for problem in problems:
        by_method: dict[str, Any] = {}
        for method in methods:
            runs = []
            for seed in seeds:
                run = run_one(problem, method, seed, settings)
                runs.append(run)
                if progress is not None:
                    progress(problem, method, seed, run)
            by_method[method] = summarise(runs)
        summary["problems"][problem] = {"methods": by_method, "decision": _decide(by_method)}
    return summary


def summarise(runs: Sequence[Run]) -> dict[str, Any]:
    """Runs reaching the target, the medians of cost and target evaluations to it (a run that
    did not reach it counts as infinite; ``None`` where the median is), and every run."""
    return {
        "reached": sum(math.isfinite(r.cost_to_target) for r in runs),
        "median_cost_to_target": median([r.cost_to_target for r in runs]),
        "median_target_evaluations": median([r.target_evaluations for r in runs]),
        "runs": [r.as_dict() for r in runs],
    }


def median(values: list[float]) -> float | None:
    """The median, ``None`` where it is infinite (more than half the runs did not reach)."""
    value = statistics.median(values)
    return None if math.isinf(value) else value


def _decide(by_method: dict[str, Any]) -> dict[str, bool | None]:
    """The protocol's decision rule (``None`` where a method was not run)."""
    if "mf_ucb" not in by_method:
        return {"meets_half_cost": None, "beats_funnel": None}
    mf = by_method["mf_ucb"]
    cost = mf["median_cost_to_target"]
    decision: dict[str, bool | None] = {"meets_half_cost": None, "beats_funnel": None}
    if "single" in by_method:
        single = by_method["single"]
        base = single["median_cost_to_target"]
        decision["meets_half_cost"] = (
            cost is not None and mf["reached"] >= single["reached"] and (base is None or cost <= 0.5 * base)
        )
    if "funnel" in by_method:
        funnel = by_method["funnel"]["median_cost_to_target"]
        decision["beats_funnel"] = cost is not None and (funnel is None or cost < funnel)
    return decision
