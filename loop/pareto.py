"""Pareto fronts: the non-dominated results of a multi-objective campaign and their hypervolume.

Everything here works on *signed* outcomes (``n x m``, every column to be maximised: a
minimised objective is negated), as BoTorch's multi-objective utilities do. The hypervolume is
BoTorch's exact ``DominatedPartitioning`` over a reference point that is given (in each
objective's own sign and units) or inferred from the front (BoTorch's
``infer_reference_point``: the nadir pushed back by 10% of the front's range).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated
from torch import Tensor


def pareto_mask(Y: Tensor) -> Tensor:
    """Which rows of ``Y`` (``n x m``, signed: larger is better) no other row dominates.

    Duplicates of a non-dominated row are all kept.

    Returns:
        ``n``-dim boolean tensor.
    """
    if Y.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    return is_non_dominated(Y.double(), deduplicate=False)


def reference_point(Y: Tensor, given: Sequence[float] | None = None, signs: Tensor | None = None) -> Tensor:
    """The signed reference point: ``given`` (own sign and units) times ``signs``, else
    inferred from the front of ``Y`` (``n x m``, signed).

    Returns:
        ``m``-dim tensor.
    """
    if given is not None:
        ref = torch.tensor(list(given), dtype=torch.double)
        return ref if signs is None else ref * signs
    return infer_reference_point(Y.double()[pareto_mask(Y)])


def hypervolume(Y: Tensor, ref_point: Tensor) -> float:
    """The hypervolume that the rows of ``Y`` (``n x m``, signed) dominate above ``ref_point``
    (``m``); rows that do not dominate the reference point add nothing."""
    Y = Y.double()
    ref_point = ref_point.double()
    above = (ref_point < Y).all(dim=-1)
    if not above.any():
        return 0.0
    return float(DominatedPartitioning(ref_point=ref_point, Y=Y[above]).compute_hypervolume())


def hypervolume_contributions(Y: Tensor, ref_point: Tensor) -> Tensor:
    """What each row of ``Y`` (``n x m``, signed) alone adds above ``ref_point``: the
    hypervolume lost without it (zero for dominated rows and for repeats of a front row).

    Returns:
        ``n``-dim tensor.
    """
    Y = Y.double()
    total = hypervolume(Y, ref_point)
    gains = torch.zeros(Y.shape[0], dtype=torch.double)
    for i in torch.nonzero(pareto_mask(Y)).reshape(-1).tolist():
        gains[i] = total - hypervolume(torch.cat([Y[:i], Y[i + 1 :]]), ref_point)
    return gains


def pareto_report(
    cycles: Sequence[int],
    Y: Tensor,
    signs: Tensor,
    names: Sequence[str],
    ids: Sequence[str],
    given_reference: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The front and the hypervolume after each cycle, as JSON-ready data.

    Args:
        cycles: ``n`` cycle numbers of the results.
        Y: ``n x m`` results in each objective's own sign and units.
        signs: ``m`` signs (``+1`` maximise, ``-1`` minimise).
        names: ``m`` objective names.
        ids: ``n`` candidate ids.
        given_reference: The configured reference point (own sign and units), if any.
    """
    signed = Y.double() * signs
    ref = reference_point(signed, given_reference, signs)
    front = pareto_mask(signed)
    by_cycle = []
    for cycle in sorted(set(cycles)):
        upto = torch.tensor([c <= cycle for c in cycles], dtype=torch.bool)
        by_cycle.append({"cycle": cycle, "hypervolume": hypervolume(signed[upto], ref)})
    return {
        "objectives": list(names),
        "reference_point": (ref * signs).tolist(),
        "reference_point_inferred": given_reference is None,
        "front": [
            {"candidate_id": ids[i], **{n: float(Y[i, j]) for j, n in enumerate(names)}}
            for i in torch.nonzero(front).reshape(-1).tolist()
        ],
        "hypervolume": by_cycle[-1]["hypervolume"] if by_cycle else 0.0,
        "hypervolume_by_cycle": by_cycle,
    }


def plot_pareto(report: Mapping[str, Any], path: str | Path) -> Path:
    """A two-panel PNG of :func:`pareto_report`'s output: the front (first two objectives)
    and the hypervolume per cycle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["objectives"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    front = sorted((p[names[0]], p[names[1]]) for p in report["front"])
    left.plot([f[0] for f in front], [f[1] for f in front], "o-", c="C3", ms=5, label="Pareto front")
    left.set(xlabel=names[0], ylabel=names[1], title="non-dominated results")
    left.legend()
    history = report["hypervolume_by_cycle"]
    right.plot([h["cycle"] for h in history], [h["hypervolume"] for h in history], "o-")
    right.set(xlabel="cycle", ylabel="hypervolume", title="hypervolume per cycle")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
