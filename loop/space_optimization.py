"""Optimising an acquisition function over a continuous or mixed search space.

How a batch is chosen in a space, apart from what is scored (:class:`loop.acquisition.Acquisition`
builds the function), as BoTorch keeps ``optimize_acqf`` apart from its acquisition functions.
Each pick runs ``optimize_acqf`` under the space's linear constraints, started from the best of
the raw samples (feasible points, composition simplices sampled exactly), once per categorical
combination with the one-hot columns fixed; the batch is built one member at a time, each
earlier pick passed on as pending (sequential greedy, as ``optimize_acqf_mixed``). Integers are
optimised relaxed and rounded by the space.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.optim import optimize_acqf
from botorch.optim.initializers import initialize_q_batch
from torch import Tensor

from loop.space import Categorical, SearchSpace

MAX_CATEGORY_COMBINATIONS = 64
"""Categorical combinations tried per pick; more are sampled down to this many."""


def optimize_acqf_in_space(
    acqf: AcquisitionFunction,
    space: SearchSpace,
    q: int,
    X_pending: Tensor | None,
    seed: int,
    raw_samples: int,
    num_restarts: int,
    max_iterations: int,
) -> tuple[Tensor, Tensor]:
    """The ``q`` best points of ``space`` for ``acqf``, chosen one after another.

    Args:
        acqf: The acquisition function, built with ``X_pending`` already pending.
        space: The search space: bounds, linear constraints, categorical columns.
        q: The batch size.
        X_pending: ``p x d`` candidates pending before this batch, or ``None``.
        seed: Seeds the raw samples and the sampled categorical combinations.
        raw_samples: Feasible points that seed each optimisation.
        num_restarts: Best raw samples the optimiser starts from.
        max_iterations: Iterations of the optimiser per start.

    Returns:
        ``q x d`` encoded points and their ``q`` acquisition values (each as it was chosen,
        with the earlier picks pending).
    """
    inequality, equality = space.botorch_constraints()
    raw = space.encode(space.sample(raw_samples, seed))
    combinations = _category_combinations(space, seed) or [{}]
    points: list[Tensor] = []
    values: list[float] = []
    for _ in range(q):
        best: tuple[Tensor, float] | None = None
        for fixed in combinations:
            starts = raw.clone()
            for column, level in fixed.items():
                starts[:, column] = level
            with torch.no_grad():
                start_values = acqf(starts.unsqueeze(-2))
            initial, _ = initialize_q_batch(starts.unsqueeze(-2), start_values, n=num_restarts)
            X, value = optimize_acqf(
                acqf,
                bounds=space.bounds,
                q=1,
                num_restarts=initial.shape[0],
                batch_initial_conditions=initial,
                fixed_features=fixed or None,
                inequality_constraints=inequality or None,
                equality_constraints=equality or None,
                options={"maxiter": max_iterations},
            )
            assert value is not None  # the acquisition values come back with the best candidates
            if best is None or float(value) > best[1]:
                best = (X.detach()[0], float(value))
        assert best is not None
        points.append(best[0])
        values.append(best[1])
        if len(points) < q:
            picked = torch.stack(points)
            acqf.set_X_pending(picked if X_pending is None else torch.cat([X_pending, picked]))
    return torch.stack(points), torch.tensor(values, dtype=torch.double)


def _category_combinations(space: SearchSpace, seed: int) -> list[dict[int, float]]:
    """Fixed one-hot settings for every combination of categorical values (sampled if many)."""
    groups = [
        [{c: float(c == chosen) for c in space.columns(p.name)} for chosen in space.columns(p.name)]
        for p in space.parameters
        if isinstance(p, Categorical)
    ]
    if not groups:
        return []
    combos = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*groups)]
    if len(combos) > MAX_CATEGORY_COMBINATIONS:
        rng = np.random.default_rng(seed)
        combos = [combos[i] for i in rng.choice(len(combos), MAX_CATEGORY_COMBINATIONS, replace=False)]
    return combos
