"""``alloop bench moo``: hypervolume after a fixed budget, alloop's Pareto search against baselines.

Problems (every objective maximised; a minimised one is negated): BoTorch's BraninCurrin
(``d = 2``) and DTLZ2 (``d = 6``, two objectives), and the simulated thin-film lab
(:func:`oracles.functions.thin_film` under Ar) with two objectives, conductivity up and
roughness down, over a box (``x_cu``, the Ag share of the rest, temperature, minutes).
Arms, each from the same Sobol initial designs per seed: ``random``, alloop's ``qparego`` and
``qlognehvi`` (:class:`~loop.multiobjective.ModelledAcquisition` on alloop's GP), and BayBE's
``ParetoObjective`` (its default Bayesian recommender), skipped with a reason where BayBE is not
importable. The score is the hypervolume of everything measured above a fixed reference point.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any, cast

import torch
from botorch.test_functions.multi_objective import DTLZ2, BraninCurrin
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.multiobjective import ModelledAcquisition
from loop.pareto import hypervolume
from loop.space import Continuous, SearchSpace
from oracles.functions import thin_film
from surrogates.gp import GPSurrogate

ARMS = ("random", "qparego", "qlognehvi", "qlognehvi_tr", "qlognehvi_tr_log", "baybe")
#: Arms of alloop's acquisitions: arm → (kind, trust region side (``None``: the whole box),
#: whether the problem's :attr:`Problem.log_scale` objectives are modelled as logarithms).
_ALLOOP_ARMS: dict[str, tuple[str, float | None, bool]] = {
    "qparego": ("qparego", None, False),
    "qlognehvi": ("qlognehvi", None, False),
    "qlognehvi_tr": ("qlognehvi", 0.8, False),  # TuRBO's starting side, not tuned
    "qlognehvi_tr_log": ("qlognehvi", 0.8, True),
}
_ACQ_OPTIONS: dict[str, Any] = {"num_restarts": 4, "raw_samples": 128, "mc_samples": 64, "max_iterations": 60}


@dataclass(frozen=True)
class Problem:
    """A box-bounded problem with ``m`` maximised objectives."""

    name: str
    names: tuple[str, ...]
    """``d`` input names."""
    bounds: Tensor
    """``2 x d``."""
    evaluate: Callable[[Tensor], Tensor]
    """``n x d`` → ``n x m``, every column maximised."""
    ref_point: Tensor
    """``m``, signed like the outputs."""
    log_scale: tuple[int, ...] = ()
    """Objectives a user would mark ``log_scale`` (positive, spanning decades)."""


def _thin_film(X: Tensor) -> Tensor:
    rows = []
    for cu, share, temp, minutes in X.tolist():
        out = thin_film(
            {
                "x_cu": cu,
                "x_ag": (1 - cu) * share,
                "x_au": (1 - cu) * (1 - share),
                "anneal_c": temp,
                "anneal_min": minutes,
                "atmosphere": "Ar",
            }
        )
        rows.append([out["conductivity"], -out["roughness_nm"]])
    return torch.tensor(rows, dtype=torch.double)


def _buffer(value: Any) -> Tensor:
    """A test function's registered buffer (typed by torch as ``Tensor | Module``)."""
    return cast(Tensor, value)


def problems() -> dict[str, Problem]:
    """The benchmark's problems by name."""
    bc = BraninCurrin(negate=True).double()
    dtlz = DTLZ2(dim=6, num_objectives=2, negate=True).double()
    return {
        "branincurrin": Problem("branincurrin", ("x1", "x2"), _buffer(bc.bounds), bc, _buffer(bc.ref_point)),
        "dtlz2": Problem(
            "dtlz2", tuple(f"x{i}" for i in range(6)), _buffer(dtlz.bounds), dtlz, _buffer(dtlz.ref_point)
        ),
        "thinfilm": Problem(
            "thinfilm",
            ("x_cu", "ag_share", "anneal_c", "anneal_min"),
            torch.tensor([[0.0, 0.0, 200.0, 5.0], [1.0, 1.0, 600.0, 60.0]], dtype=torch.double),
            _thin_film,
            torch.tensor([0.0, -6.0], dtype=torch.double),
            log_scale=(0,),  # conductivity: near zero over most of the box, a narrow peak
        ),
    }


def initial_designs(problem: Problem, n: int, seed: int) -> Tensor:
    """``n x d`` scrambled-Sobol points in the box, the same for every arm of a seed."""
    lower, upper = problem.bounds
    unit = torch.quasirandom.SobolEngine(lower.numel(), scramble=True, seed=seed).draw(n).double()
    return lower + (upper - lower) * unit


def _box(problem: Problem) -> list[tuple[str, float, float]]:
    return list(zip(problem.names, *problem.bounds.tolist(), strict=True))


def _alloop_step(arm: str, problem: Problem, X: Tensor, Y: Tensor, q: int, seed: int) -> Tensor:
    kind, trust_region, log = _ALLOOP_ARMS[arm]
    space = SearchSpace([Continuous(n, lo, hi) for n, lo, hi in _box(problem)])
    gp = GPSurrogate(
        input_bounds=problem.bounds, warm_start=False, log_outcomes=problem.log_scale if log else ()
    )
    torch.manual_seed(seed)
    gp.fit(SupervisedDataset(X, Y, feature_names=list(problem.names), outcome_names=["f1", "f2"]))
    acquisition = ModelledAcquisition(
        kind,
        [1.0, 1.0],
        None,
        2,
        reference_point=problem.ref_point.tolist(),
        trust_region=trust_region,
        **_ACQ_OPTIONS,
    )
    picks = acquisition.select_in_space(gp, space, q, X, Y, None, seed)
    return torch.stack([p.X for p in picks])


def baybe_available() -> str | None:
    """``None`` where BayBE imports, else why it cannot run."""
    try:
        import baybe  # noqa: F401
    except ImportError as error:
        return f"BayBE is not importable ({error}); install the 'bench' extra"
    return None


def _run_baybe(problem: Problem, X0: Tensor, Y0: Tensor, q: int, iterations: int, seed: int) -> Tensor:
    import pandas as pd
    from baybe import Campaign
    from baybe.objectives import ParetoObjective
    from baybe.parameters import NumericalContinuousParameter
    from baybe.searchspace import SearchSpace as BaybeSpace
    from baybe.targets import NumericalTarget
    from baybe.utils.random import set_random_seed

    set_random_seed(seed)
    params = [NumericalContinuousParameter(n, (lo, hi)) for n, lo, hi in _box(problem)]
    targets = [NumericalTarget("f1"), NumericalTarget("f2")]
    campaign = Campaign(BaybeSpace.from_product(params), ParetoObjective(targets))
    X, Y = X0, Y0
    frame = pd.DataFrame(X.numpy(), columns=list(problem.names))
    frame[["f1", "f2"]] = Y.numpy()
    campaign.add_measurements(frame)
    for _ in range(iterations):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picked = campaign.recommend(batch_size=q)
        Xn = torch.tensor(picked[list(problem.names)].to_numpy(), dtype=torch.double)
        Yn = problem.evaluate(Xn)
        picked[["f1", "f2"]] = Yn.numpy()
        campaign.add_measurements(picked)
        X, Y = torch.cat([X, Xn]), torch.cat([Y, Yn])
    return Y


def run_arm(arm: str, problem: Problem, q: int, initial: int, iterations: int, seed: int) -> dict[str, Any]:
    """One campaign of ``initial + q * iterations`` evaluations: its hypervolume and seconds."""
    started = time.perf_counter()
    X = initial_designs(problem, initial, seed)
    Y = problem.evaluate(X)
    if arm == "baybe":
        Y = _run_baybe(problem, X, Y, q, iterations, seed)
    else:
        generator = torch.Generator().manual_seed(10_000 + seed)
        lower, upper = problem.bounds
        for step in range(iterations):
            if arm == "random":
                Xn = lower + (upper - lower) * torch.rand(q, lower.numel(), generator=generator).double()
            else:
                Xn = _alloop_step(arm, problem, X, Y, q, 1000 * seed + step)
            X, Y = torch.cat([X, Xn]), torch.cat([Y, problem.evaluate(Xn)])
    return {
        "hypervolume": hypervolume(Y, problem.ref_point),
        "initial_hypervolume": hypervolume(Y[:initial], problem.ref_point),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(
    cases: list[tuple[str, int]],
    seeds: int,
    initial: int,
    evaluations: int,
    on_run: Callable[[str, str, int, dict[str, Any]], None] | None = None,
    arms: Sequence[str] = ARMS,
    candidate: str = "qlognehvi",
    first_seed: int = 0,
) -> dict[str, Any]:
    """Every arm on every ``(problem, q)`` case over seeds ``first_seed..first_seed+seeds-1``, ``evaluations``
    after the ``initial`` designs (a multiple of each ``q``), and the decision rule of
    benchmarks/RESULTS.md: the ``candidate`` arm's median hypervolume ≥ BayBE's on every case."""
    for _, q in cases:
        if evaluations % q:
            raise ValueError(f"evaluations ({evaluations}) must be a multiple of q ({q})")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or candidate not in arms:
        raise ValueError(
            f"arms must be among {list(ARMS)} and include the candidate {candidate!r}, got {list(arms)}"
        )
    catalogue = problems()
    skipped = baybe_available()
    arms = [a for a in arms if a != "baybe" or skipped is None]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name, q in cases:
        label = f"{name}_q{q}"
        per_arm: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
        for seed in range(first_seed, first_seed + seeds):
            for arm in arms:
                outcome = run_arm(arm, catalogue[name], q, initial, evaluations // q, seed)
                per_arm[arm].append(outcome)
                if on_run is not None:
                    on_run(label, arm, seed, outcome)
        results[label] = {
            arm: {
                "hypervolume_median": median(r["hypervolume"] for r in runs),
                "hypervolume": [round(r["hypervolume"], 5) for r in runs],
                "seconds_median": median(r["seconds"] for r in runs),
            }
            for arm, runs in per_arm.items()
        }
    ahead = {
        label: case[candidate]["hypervolume_median"] >= case["baybe"]["hypervolume_median"]
        for label, case in results.items()
        if "baybe" in case
    }
    return {
        "benchmark": "moo",
        "seeds": list(range(first_seed, first_seed + seeds)),
        "initial_designs": initial,
        "evaluations_after_initial": evaluations,
        "acquisition_options": _ACQ_OPTIONS,
        "baybe_skipped": skipped,
        "cases": results,
        "candidate": candidate,
        "candidate_ahead_of_baybe": ahead,
        "goal_met": bool(ahead) and all(ahead.values()) if skipped is None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
