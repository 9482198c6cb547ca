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
from loop.fidelity import Fidelities
from loop.fidelity_acquisition import FidelityPolicy, PairState
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
    """One method on one seed: cost spent and target evaluations when the target was first reached."""

    cost_to_target: float
    target_evaluations: float
    total_cost: float

    def as_dict(self) -> dict[str, float | None]:
        return {k: None if math.isinf(v) else v for k, v in vars(self).items()}


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


class _Trace:
    """Spend and the best target-fidelity value as measurements come in."""

    def __init__(self, threshold: float) -> None:
        self.threshold, self.cost, self.target_evaluations = threshold, 0.0, 0
        self.reached: Run | None = None

    def add(self, fidelity: str, value: float) -> None:
        self.cost += FIDELITIES[fidelity][1]
        if fidelity == "target":
            self.target_evaluations += 1
            if self.reached is None and value >= self.threshold:
                self.reached = Run(self.cost, self.target_evaluations, math.nan)

    def result(self) -> Run:
        if self.reached is None:
            return Run(math.inf, math.inf, self.cost)
        return Run(self.reached.cost_to_target, self.reached.target_evaluations, self.cost)


def _single(problem: SyntheticTestFunction, X: Tensor, trace: _Trace, settings: Settings, seed: int) -> Run:
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
            values.append(float(_measure(problem, X[row : row + 1], "target")[0]))
            trace.add("target", values[-1])
        cycle += 1
    return trace.result()


def _multi(
    kind: str, problem: SyntheticTestFunction, X: Tensor, trace: _Trace, settings: Settings, seed: int
) -> Run:
    fidelities = Fidelities.from_costs({name: cost for name, (_, cost) in FIDELITIES.items()}, "target")
    policy = FidelityPolicy(kind, fidelities)
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    surrogate = MultiFidelityGP(bounds, max_iterations=settings.max_iterations)
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
            value = float(_measure(problem, X[pick.row : pick.row + 1], pick.fidelity)[0])
            level = names.index(pick.fidelity)
            state.open[pick.row, level] = False
            state.values[pick.row, level] = value
            inputs.append(policy.augment(X[pick.row : pick.row + 1], pick.fidelity)[0])
            values.append(value)
            trace.add(pick.fidelity, value)
            spent_any = True
        if not spent_any:
            break
        cycle += 1
    return trace.result()


def run_one(problem_name: str, method: str, seed: int, settings: Settings = Settings()) -> Run:
    """One method on one seed's pool."""
    torch.manual_seed(seed)
    problem = PROBLEMS[problem_name]()
    X = _pool(problem, settings.pool_size, seed)
    truth = _measure(problem, X, "target")
    best, median = float(truth.max()), float(truth.median())
    trace = _Trace(best - settings.regret_fraction * (best - median))
    if method == "single":
        return _single(problem, X, trace, settings, seed)
    return _multi(method, problem, X, trace, settings, seed)


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
            by_method[method] = {
                "reached": sum(math.isfinite(r.cost_to_target) for r in runs),
                "median_cost_to_target": _median([r.cost_to_target for r in runs]),
                "median_target_evaluations": _median([r.target_evaluations for r in runs]),
                "runs": [r.as_dict() for r in runs],
            }
        summary["problems"][problem] = {"methods": by_method, "decision": _decide(by_method)}
    return summary


def _median(values: list[float]) -> float | None:
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
