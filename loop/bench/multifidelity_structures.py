"""``alloop bench multifidelity --problems structures``: issue 22's part (b), the discovery
benchmark's structure pool at two fidelities (benchmarks/RESULTS.md, "Multi-fidelity", holds
the protocol and decision rule).

The pool and its EMT ground truth are the discovery benchmark's (:func:`~loop.bench.discovery.load_truth`,
11,991 Cu-Ag-Au-Pd-Pt-Ni structures). Fidelities: ``emt``, the target, is the ground truth (an
EMT relaxation); ``chgnet`` is CHGNet's single-point formation energy at the geometry as
generated (:func:`~loop.bench.discovery_mlip.chgnet_energies`, cached beside the pool), against
CHGNet's energies of the ground truth's elemental reference crystals. A CHGNet *relaxation* of every candidate
(~4 s each) would not fit this machine; a single point costs ~0.01-0.05 s. Good designs: the
structures within ``within_mev`` of the true hull; the target is ``recall`` of them measured
with EMT. Methods, all on the pool's atomic fractions + CHGNet embedding as model inputs:

* ``single`` — the discovery benchmark's ``gp_chgnet_hull_thompson``, EMT only;
* ``funnel`` — CHGNet on every candidate, then batches promoted to EMT deepest below the
  CHGNet hull first;
* ``mf_hull`` — the multi-fidelity GP with the ``mf_hull`` policy
  (:mod:`loop.fidelity_acquisition`): ``hull_thompson`` at the EMT fidelity, each pick measured
  at the fidelity that most reduces EMT's variance there per unit cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loop.bench.discovery import DiscoveryProtocol, Truth, load_truth, simulate
from loop.bench.multifidelity import PoolProblem, Run, Settings, Trace, median, run_multi, summarise
from loop.fidelity import Fidelities
from loop.hull_acquisition import HullTarget

METHODS = ("single", "funnel", "mf_hull")
#: The discovery benchmark's variant that ``single`` is.
SINGLE_VARIANT = "gp_chgnet_hull_thompson"


@dataclass(frozen=True)
class StructureProtocol:
    """Part (b)'s knobs (defaults: benchmarks/RESULTS.md). The pool, budget (EMT evaluations
    there, cost units here), batch, initial designs and ``within_mev`` are the discovery
    benchmark's."""

    discovery: DiscoveryProtocol = field(default_factory=DiscoveryProtocol)
    costs: dict[str, float] = field(default_factory=lambda: {"chgnet": 0.01, "emt": 1.0})
    recall: float = 0.95
    max_iterations: int = 100
    """L-BFGS iterations of a cold GP fit (warm fits on >= 500 points stop at 20), as in discovery."""

    @property
    def settings(self) -> Settings:
        """The multi-fidelity loop's knobs."""
        d = self.discovery
        return Settings(
            budget=float(d.budget),
            initial_designs=d.initial,
            single_batch=d.batch_size,
            mf_batch=d.batch_size,
            max_iterations=self.max_iterations,
        )

    def as_dict(self) -> dict[str, Any]:
        d = self.discovery
        return {
            "pool": d.pool.model_dump(),
            "budget": d.budget,
            "batch_size": d.batch_size,
            "initial": d.initial,
            "within_mev": d.within_mev,
            "costs": self.costs,
            "recall": self.recall,
        }


def structure_problem(truth: Truth, protocol: StructureProtocol) -> PoolProblem:
    """The pool at its two fidelities, on the atomic fractions + CHGNet embedding."""
    featurised = truth.with_inputs("chgnet")
    X = featurised.X  # first: the embedding's width, and so the feature names, come with it
    elements = sorted(protocol.discovery.pool.elements)
    hull = HullTarget.from_feature_names(elements, featurised.feature_names, protocol.discovery.within_mev)
    table = {"chgnet": truth.chgnet_formation_energies().tolist(), "emt": truth.energies.tolist()}
    good = [cid in truth.targets for cid in truth.pool.ids]
    return PoolProblem(
        X,
        Fidelities.from_costs(protocol.costs, "emt"),
        lambda row, fidelity: table[fidelity][row],
        -1.0,
        lambda row, value: good[row],
        needed=math.ceil(protocol.recall * len(truth.targets)),
        good=len(truth.targets),
        hull=hull,
    )


def run_one(method: str, seed: int, truth: Truth, problem: PoolProblem, protocol: StructureProtocol) -> Run:
    """One method on one seed."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    torch.manual_seed(seed)
    if method != "single":
        return run_multi(method, problem, protocol.settings, seed)
    trace = Trace(problem)
    for row in simulate(SINGLE_VARIANT, truth, protocol.discovery, seed).order:
        trace.add(row, "emt", problem.measure(row, "emt"))
    return trace.result()


def run_benchmark(
    methods: Sequence[str],
    seeds: Sequence[int],
    workdir: Path,
    protocol: StructureProtocol | None = None,
    progress: Callable[[str, int, Run], None] | None = None,
) -> dict[str, Any]:
    """Every method on every seed, the medians and the decision (the ground truth and CHGNet's
    energies are computed first where they are not cached under ``workdir``)."""
    protocol = protocol or StructureProtocol()
    truth = load_truth(protocol.discovery, workdir)
    problem = structure_problem(truth, protocol)
    by_method: dict[str, Any] = {}
    for method in methods:
        runs = []
        for seed in seeds:
            runs.append(run_one(method, seed, truth, problem, protocol))
            if progress is not None:
                progress(method, seed, runs[-1])
        by_method[method] = summarise(runs)
        by_method[method]["median_final_recall"] = float(np.median([r.final_recall or 0.0 for r in runs]))
    return {
        "protocol": protocol.as_dict(),
        "pool_size": len(truth.pool),
        "targets": len(truth.targets),
        "needed": problem.needed,
        "methods": by_method,
        "decision": decide(by_method, protocol.settings.budget),
    }


def decide(by_method: dict[str, Any], budget: float) -> dict[str, bool | None]:
    """Part (b)'s rule: ``mf_hull`` meets the goal iff its median cost to the target is
    <= 1/2 of ``single``'s, and beats the funnel iff it is below the funnel's. A run of
    ``single`` or the funnel that does not reach the target counts as the budget, one of
    ``mf_hull`` as not reached (``None`` where a method was not run)."""
    if "mf_hull" not in by_method:
        return {"meets_half_cost": None, "beats_funnel": None}
    cost = median([_cost(r, math.inf) for r in by_method["mf_hull"]["runs"]])

    def baseline(method: str) -> float | None:
        if method not in by_method:
            return None
        return median([_cost(r, budget) for r in by_method[method]["runs"]])

    single, funnel = baseline("single"), baseline("funnel")
    return {
        "meets_half_cost": None if single is None else cost is not None and cost <= 0.5 * single,
        "beats_funnel": None if funnel is None else cost is not None and cost < funnel,
    }


def _cost(run: dict[str, Any], unreached: float) -> float:
    value = run["cost_to_target"]
    return unreached if value is None else float(value)
