"""``alloop bench discovery``: how fast does a structure campaign find the near-hull structures?

A pool of candidate structures is relaxed exhaustively with EMT once
(:mod:`loop.bench.discovery_truth`, cached under the workdir); each variant then runs a
simulated campaign per seed against that ground truth: ``initial`` random picks, then batches
of ``batch_size`` chosen by the variant's decision (fit + score + pick, the campaign's own
:class:`~loop.acquisition.Acquisition` and :class:`~surrogates.gp.GPSurrogate` on the pool's
features) until ``budget`` evaluations. Reported per variant: EMT evaluations to find 95% and
100% of the structures within ``within_mev`` meV/atom of the true hull, hit rate, DAF and recall
per round (:func:`loop.discovery.discovery_report`), seconds per decision. Candidates whose
relaxation failed are left out of the pool (their count is reported).
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.acquisition import Acquisition
from loop.bench.discovery_mlip import (
    chgnet_energies,
    chgnet_pool,
    chgnet_references,
    committee_surrogate,
    keys_pool,
    references,
)
from loop.bench.discovery_mlip import committee_probe as probe
from loop.bench.discovery_truth import CAMPAIGN_SETTINGS, cache_key, cached_pool, ground_truth
from loop.discovery import EvaluatedStructure, discovery_report
from loop.featurize import StructureFeaturizer
from loop.hull_acquisition import HullTarget
from loop.stability import hull_points, near_hull
from loop.structures import StructurePool, StructureSpaceOptions
from surrogates.base import Surrogate
from surrogates.committee_surrogate import CommitteeSurrogate
from surrogates.gp import GPSurrogate

#: Variant name → (acquisition kind, model inputs: ``pairs`` features, ``chgnet`` embedding,
#: ``chgnet_prior`` both and CHGNet's formation energy as the GP's prior mean, ``keys`` of the
#: committee; ``random`` fits nothing).
VARIANTS: dict[str, tuple[str, str]] = {
    "random": ("random", "pairs"),
    "gp_pair_thompson": ("thompson", "pairs"),
    "gp_pair_hull_probability": ("hull_probability", "pairs"),
    "gp_pair_hull_thompson": ("hull_thompson", "pairs"),
    "gp_chgnet_thompson": ("thompson", "chgnet"),
    "gp_chgnet_hull_thompson": ("hull_thompson", "chgnet"),
    "gp_pair_hull_membership": ("hull_membership", "pairs"),
    "gp_chgnet_prior_hull_thompson": ("hull_thompson", "chgnet_prior"),
    "gp_chgnet_prior_hull_membership": ("hull_membership", "chgnet_prior"),
    "committee_thompson": ("thompson", "keys"),
}


@dataclass(frozen=True)
class DiscoveryProtocol:
    """The benchmark's fixed protocol (see benchmarks/RESULTS.md)."""

    pool: StructureSpaceOptions = field(
        default_factory=lambda: StructureSpaceOptions(
            elements=["Cu", "Ag", "Au", "Pd", "Pt", "Ni"],
            lattice=["fcc", "bcc", "hcp"],
            max_atoms=5,
            prototypes=["built-in"],
        )
    )
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    budget: int = 1000
    batch_size: int = 50
    initial: int = 50
    within_mev: float = 1.0
    variants: tuple[str, ...] = (
        "random",
        "gp_pair_thompson",
        "gp_pair_hull_thompson",
        "gp_chgnet_thompson",
        "gp_chgnet_hull_thompson",
    )


@dataclass(frozen=True)
class ModelInputs:
    """Model inputs put together from several featurisations: ``N x d`` rows, their names."""

    X: Tensor
    feature_names: list[str]


@dataclass
class Truth:
    """The pool (relaxed candidates only), its features and formation energies, and the targets."""

    pool: StructurePool
    energies: Tensor
    formulas: list[str]
    targets: set[str]
    failed: int
    path: Path
    """The ground truth's rows (``truth-<key>.jsonl``); other caches of the pool sit beside it."""
    inputs: dict[str, StructurePool] = field(default_factory=dict)
    """The pool with model inputs other than pair features, by kind, built once."""

    def with_inputs(self, kind: str) -> StructurePool:
        """The pool featurised as ``kind`` (see :data:`VARIANTS`)."""
        if kind == "pairs":
            return self.pool
        if kind not in self.inputs:
            if kind == "chgnet":
                self.inputs[kind] = chgnet_pool(self.pool, self.cache_path("chgnet.npz"))
            else:
                self.inputs[kind] = keys_pool(self.pool)
        return self.inputs[kind]

    def chgnet_prior_inputs(self) -> ModelInputs:
        """Pair features, CHGNet's embedding and, last, CHGNet's formation energy: the inputs
        of the GP whose prior mean is the universal potential's prediction (Δ-learning)."""
        pairs, embedding, k = self.pool, self.with_inputs("chgnet"), len(self.pool.featurizer.elements)
        cheap = self.chgnet_formation_energies().unsqueeze(-1).to(pairs.X)
        return ModelInputs(
            torch.cat([pairs.X, embedding.X[:, k:], cheap], dim=-1),
            [*pairs.feature_names, *embedding.feature_names[k:], "chgnet_formation_energy_per_atom"],
        )

    def chgnet_formation_energies(self) -> Tensor:
        """CHGNet's single-point formation energy per atom of every candidate at its geometry
        as generated (``N``, eV/atom; :func:`~loop.bench.discovery_mlip.chgnet_energies`)
        against CHGNet's energies of the elements' reference crystals, cached beside the pool."""
        cache = self.cache_path("chgnet-energy.npz")
        elements = self.pool.featurizer.elements  # sorted: the order of the x_<element> columns
        energies = torch.as_tensor(chgnet_energies(self.pool, cache), dtype=torch.double)
        references = torch.as_tensor(chgnet_references(elements, cache), dtype=torch.double)
        return energies - self.pool.X[:, : len(elements)].double() @ references

    def cache_path(self, suffix: str) -> Path:
        """Where a cache of the pool sits: beside its ground truth, ``pool-<key>.<suffix>``."""
        key = self.path.stem.removeprefix("truth-")
        return self.path.with_name(f"pool-{key}.{suffix}")


def load_truth(
    protocol: DiscoveryProtocol,
    workdir: Path,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Truth:
    """Generate (or read) the pool and its ground truth, relaxing what is not cached yet."""
    key = cache_key(protocol.pool, CAMPAIGN_SETTINGS)
    candidates = cached_pool(protocol.pool, workdir, key)
    path = workdir / f"truth-{key}.jsonl"
    rows = ground_truth(candidates, path, workers=workers, progress=progress)
    ok = [c for c in candidates if rows[c.id].status == "ok"]
    pool = StructurePool(ok, StructureFeaturizer(protocol.pool.elements))
    formation = [float(rows[c.id].formation_energy_per_atom or 0.0) for c in ok]
    formulas = [rows[c.id].formula for c in ok]
    points = hull_points(zip(pool.ids, formulas, formation, strict=True), protocol.pool.elements)
    return Truth(
        pool,
        torch.tensor(formation, dtype=torch.double),
        formulas,
        near_hull(points, protocol.within_mev),
        len(candidates) - len(ok),
        path,
    )


@dataclass(frozen=True)
class SimulatedCampaign:
    """One simulated campaign: the pool rows in evaluation order, each one's round, and the
    seconds of each decision."""

    order: list[int]
    cycles: list[int]
    decisions: list[float]


def run_variant(
    variant: str,
    truth: Truth,
    protocol: DiscoveryProtocol,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One simulated campaign: the evaluation order, per-round metrics and decision times."""
    run = simulate(variant, truth, protocol, seed, progress)
    return _summary(variant, seed, run.order, run.cycles, run.decisions, truth, protocol)


def simulate(
    variant: str,
    truth: Truth,
    protocol: DiscoveryProtocol,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> SimulatedCampaign:
    """Run the campaign of ``variant`` on one seed against the ground truth; ``progress`` gets a
    JSON line per round (what a run stopped midway leaves)."""
    pool = truth.pool
    acquisition = _acquisition(variant, protocol, pool.feature_names)
    kind, inputs = VARIANTS[variant]
    featurised = model_inputs(truth, inputs)
    X = featurised.X
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.choice(len(pool), size=min(protocol.initial, len(pool)), replace=False)]
    surrogate: Surrogate | None = None
    if inputs == "keys":
        assert isinstance(featurised, StructurePool)
        surrogate = committee_surrogate(featurised, order, references(truth.path), seed)
    elif kind != "random":
        surrogate = gp_of(inputs, X)
    cycles = [0] * len(order)
    decisions: list[float] = []
    budget = min(protocol.budget, len(pool))
    cycle = 0
    while len(order) < budget:
        cycle += 1
        q = min(protocol.batch_size, budget - len(order))
        taken = set(order)
        free = [i for i in range(len(pool)) if i not in taken]
        Y = truth.energies[order].unsqueeze(-1)
        start = time.perf_counter()
        if surrogate is not None:
            dataset = SupervisedDataset(
                X[order], Y, feature_names=featurised.feature_names, outcome_names=["e"]
            )
            surrogate.fit(dataset)
        picks = acquisition.select_from_pool(surrogate, X[free], q, X[order], Y, None, seed * 1000 + cycle)  # type: ignore[arg-type]
        decisions.append(time.perf_counter() - start)
        order += [free[p.index] for p in picks if p.index is not None]  # in place: the committee reads it
        cycles += [cycle] * len(picks)
        if progress is not None:
            found = sum(pool.ids[i] in truth.targets for i in order)
            line = {"variant": variant, "seed": seed, "cycle": cycle, "evaluated": len(order)}
            progress(json.dumps({**line, "targets_found": found, "decision_s": round(decisions[-1], 2)}))
    if isinstance(surrogate, CommitteeSurrogate):
        surrogate.close()
    return SimulatedCampaign(order, cycles, decisions)


def model_inputs(truth: Truth, inputs: str) -> StructurePool | ModelInputs:
    """The pool's rows as the model of a variant reads them (see :data:`VARIANTS`)."""
    return truth.chgnet_prior_inputs() if inputs == "chgnet_prior" else truth.with_inputs(inputs)


def gp_of(inputs: str, X: Tensor) -> GPSurrogate:
    """The GP of a variant, inputs scaled by the pool's range; on ``chgnet_prior`` inputs its
    prior mean reads CHGNet's formation energy, the last column."""
    prior = X.shape[-1] - 1 if inputs == "chgnet_prior" else None
    return GPSurrogate(input_bounds=pool_bounds(X), prior_mean_column=prior)


def decision_seconds(
    truth: Truth,
    sizes: Sequence[int],
    observations: int,
    q: int,
    seed: int = 0,
    variant: str = "gp_pair_thompson",
    protocol: DiscoveryProtocol | None = None,
) -> list[dict[str, Any]]:
    """Seconds of one warm decision (GP fit + batch of ``q``) of a GP ``variant`` on pools of
    ``sizes`` rows, with ``observations`` measured; pools larger than the truth repeat its
    rows (the cost depends on the rows' number, not their values). Peak RSS is the process's."""
    kind, inputs = VARIANTS[variant]
    if kind == "random" or inputs == "keys":
        raise ValueError(f"decision timing is of the GP variants, not {variant!r}")
    featurised = model_inputs(truth, inputs)
    X, Y = featurised.X, truth.energies.unsqueeze(-1)
    rng = np.random.default_rng(seed)
    observed = torch.as_tensor(rng.choice(X.shape[0], size=observations, replace=False))
    dataset = SupervisedDataset(
        X[observed], Y[observed], feature_names=featurised.feature_names, outcome_names=["e"]
    )
    acquisition = _acquisition(variant, protocol or DiscoveryProtocol(), truth.pool.feature_names)
    out = []
    for size in sizes:
        choices = X[torch.arange(size) % X.shape[0]]
        surrogate = gp_of(inputs, X)
        surrogate.fit(dataset)  # the campaign's later decisions start warm
        start = time.perf_counter()
        surrogate.fit(dataset)
        acquisition.select_from_pool(surrogate, choices, q, X[observed], Y[observed], None, seed)
        out.append(
            {
                "variant": variant,
                "candidates": size,
                "observations": observations,
                "batch_size": q,
                "seconds_per_decision": time.perf_counter() - start,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    return out


def run_benchmark(
    protocol: DiscoveryProtocol,
    workdir: Path,
    decision_sizes: Sequence[int] = (10_000, 100_000),
    workers: int = 1,
    committee_probe: int = 0,
    progress: Callable[[str], None] | None = None,
    committee_refit: int = 0,
    decision_variant: str = "gp_pair_thompson",
) -> dict[str, Any]:
    """The whole benchmark: ground truth, every variant and seed, decision timings of
    ``decision_variant`` (with
    ``committee_probe`` > 0, one committee decision timed on that many candidates, and the
    next round ``committee_refit`` frames later: :func:`~loop.bench.discovery_mlip.committee_probe`)."""
    start = time.perf_counter()
    truth = load_truth(protocol, workdir, workers)
    runs = []
    for variant in protocol.variants:
        for seed in protocol.seeds:
            runs.append(run_variant(variant, truth, protocol, seed, progress))
            if progress is not None:
                progress(json.dumps({k: v for k, v in runs[-1].items() if k != "rounds"}))
    observations = min(1000, len(truth.pool) // 2)
    return {
        "protocol": {
            "pool": protocol.pool.model_dump(),
            "seeds": list(protocol.seeds),
            "budget": protocol.budget,
            "batch_size": protocol.batch_size,
            "initial": protocol.initial,
            "within_mev": protocol.within_mev,
            "relaxation": CAMPAIGN_SETTINGS,
        },
        "pool_size": len(truth.pool),
        "failed_relaxations": truth.failed,
        "targets": len(truth.targets),
        "prevalence": len(truth.targets) / len(truth.pool),
        "summary": aggregate(runs, truth),
        "decision_timing": decision_seconds(
            truth, decision_sizes, observations, protocol.batch_size, 0, decision_variant, protocol
        ),
        "committee_probe": None
        if committee_probe == 0
        else probe(
            truth.pool, truth.energies, truth.path, protocol.initial, committee_probe, refit=committee_refit
        ),
        "runs": runs,
        "wall_s": time.perf_counter() - start,
    }


def expected_random_evaluations(pool_size: int, targets: int, found: int) -> float:
    """Expected picks, without replacement, until ``found`` of ``targets`` are drawn: ``k(N+1)/(K+1)``."""
    return found * (pool_size + 1) / (targets + 1)


def aggregate(runs: list[dict[str, Any]], truth: Truth) -> dict[str, Any]:
    """Per variant: the median and range over seeds of evaluations to 95% / 100% recall,
    final-round hit rate and DAF, mean seconds per decision."""
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]

        def stat(key: str, rows: list[dict[str, Any]] = mine) -> dict[str, Any]:
            values = [r[key] for r in rows]
            known = [v for v in values if v is not None]
            return {
                "median": float(np.median(known)) if len(known) == len(values) else None,
                "values": values,
            }

        out[variant] = {
            "evaluations_to_95": stat("evaluations_to_95"),
            "evaluations_to_100": stat("evaluations_to_100"),
            "final_hit_rate": stat("final_hit_rate"),
            "final_daf": stat("final_daf"),
            "seconds_per_decision": float(np.mean([s for r in mine for s in r["decision_s"]] or [0.0])),
        }
    n, k = len(truth.pool), len(truth.targets)
    out["random_expected"] = {
        "evaluations_to_95": expected_random_evaluations(n, k, math.ceil(0.95 * k)),
        "evaluations_to_100": expected_random_evaluations(n, k, k),
    }
    return out


def _summary(
    variant: str,
    seed: int,
    order: list[int],
    cycles: list[int],
    decisions: list[float],
    truth: Truth,
    protocol: DiscoveryProtocol,
) -> dict[str, Any]:
    pool = truth.pool
    evaluated = [
        EvaluatedStructure(pool.ids[i], truth.formulas[i], c, float(truth.energies[i]))
        for i, c in zip(order, cycles, strict=True)
    ]
    rows = zip(pool.ids, truth.formulas, truth.energies.tolist(), strict=True)
    report = discovery_report(evaluated, protocol.within_mev, rows)
    found = np.cumsum([pool.ids[i] in truth.targets for i in order])
    k = len(truth.targets)

    def evaluations_to(fraction: float) -> int | None:
        reached = np.nonzero(found >= math.ceil(fraction * k))[0]
        return int(reached[0]) + 1 if k and len(reached) else None

    last = report.cycles[-1]
    return {
        "variant": variant,
        "seed": seed,
        "evaluations": len(order),
        "hits": int(found[-1]) if len(found) else 0,
        "evaluations_to_95": evaluations_to(0.95),
        "evaluations_to_100": evaluations_to(1.0),
        "final_hit_rate": last.hit_rate,
        "final_daf": last.daf,
        "rounds": [
            {
                "cycle": c.cycle,
                "evaluated": c.evaluated,
                "hits": c.hits,
                "hit_rate": c.hit_rate,
                "daf": c.daf,
                "recall": c.recall,
            }
            for c in report.cycles
        ],
        "decision_s": decisions,
    }


def _acquisition(variant: str, protocol: DiscoveryProtocol, feature_names: list[str]) -> Acquisition:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    kind = VARIANTS[variant][0]
    hull = None
    if kind.startswith("hull"):
        elements = sorted(protocol.pool.elements)
        hull = HullTarget.from_feature_names(elements, feature_names, protocol.within_mev)
    return Acquisition(kind, [-1.0], hull=hull)  # type: ignore[arg-type]


def pool_bounds(X: Tensor) -> Tensor:
    """The pool's range (as :func:`loop.build.build_surrogate` scales inputs)."""
    bounds = torch.stack([X.min(dim=0).values, X.max(dim=0).values])
    bounds[1] = torch.where(bounds[1] > bounds[0], bounds[1], bounds[0] + 1.0)
    return bounds
