"""Fidelities of a multi-fidelity campaign: named oracles with a cost per evaluation.

A campaign with ``[[oracles]]`` measures each candidate at one or more fidelities; one of them
is the *target* (the most expensive, unless another is marked ``target = true``): the best
value, the targets and patience of the stopping rules read only its results, while the
surrogate learns from every fidelity. The surrogate sees a fidelity as one more input, its
:attr:`Fidelity.value` in ``(0, 1]``: the cost relative to the target's (1 for the target), so
that BoTorch's fidelity kernel takes cheaper fidelities as further from the target and the
cost of an evaluation is the affine ``target cost x value``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loop.config_surrogate import RECALIBRATION_KEYS
from loop.schema import DEFAULT_FIDELITY

if TYPE_CHECKING:
    from loop.config import CampaignConfig

#: The acquisition kinds that choose (candidate, fidelity) pairs (:mod:`loop.fidelity_acquisition`).
FIDELITY_KINDS = ("mf_mes", "mf_ucb", "mf_hull", "funnel")


@dataclass(frozen=True)
class Fidelity:
    """One fidelity: its name, its cost per evaluation, and its input to the surrogate."""

    name: str
    cost: float
    value: float
    """The surrogate's fidelity input: cost relative to the target's, 1 for the target."""


@dataclass(frozen=True)
class Fidelities:
    """A campaign's fidelities, cheapest first, and which one is the target."""

    levels: tuple[Fidelity, ...]
    target: str

    @classmethod
    def from_costs(cls, costs: Mapping[str, float], target: str) -> Fidelities:
        """Fidelities from their costs per evaluation; ``target`` names the target one."""
        top = costs[target]
        levels = [
            Fidelity(name, cost, 1.0 if name == target else min(cost / top, 0.999))
            for name, cost in sorted(costs.items(), key=lambda item: (item[1], item[0]))
        ]
        return cls(tuple(levels), target)

    @classmethod
    def from_config(cls, config: CampaignConfig) -> Fidelities | None:
        """The fidelities of ``[[oracles]]`` (``None`` for a single-oracle campaign)."""
        if config.oracles is None:
            return None
        return cls.from_costs({e.fidelity: e.cost for e in config.oracles}, target_of(config.oracles))

    @property
    def names(self) -> list[str]:
        return [level.name for level in self.levels]

    def __getitem__(self, name: str) -> Fidelity:
        return next(level for level in self.levels if level.name == name)


def target_of(entries: Sequence[Any]) -> str:
    """The target fidelity's name among ``[[oracles]]`` entries (sections or their dicts):
    the one marked ``target``, else the most expensive."""

    def get(entry: Any, key: str) -> Any:
        return entry[key] if isinstance(entry, Mapping) else getattr(entry, key)

    marked = [get(e, "fidelity") for e in entries if get(e, "target")]
    if marked:
        return str(marked[0])
    return str(get(max(entries, key=lambda e: get(e, "cost")), "fidelity"))


def target_fidelity(stored_config: Mapping[str, Any]) -> str:
    """The target fidelity of a campaign's stored configuration (a ledger's ``campaigns.config``)."""
    entries = stored_config.get("oracles")
    return target_of(entries) if entries else DEFAULT_FIDELITY


def without_default_recalibration(data: Any) -> Any:
    """Before validation: a multi-fidelity campaign's GP names ``calibration = "none"`` unless
    its file names a recalibration. The default one serves the surrogate-based stopping rules,
    which such a campaign does not have; a named one is refused (:func:`check_fidelity_campaign`)."""
    if not isinstance(data, Mapping) or "oracles" not in data:
        return data
    surrogate = data.get("surrogate", {})
    if not isinstance(surrogate, Mapping) or surrogate.get("type", "gp") != "gp":
        return data
    if RECALIBRATION_KEYS & set(surrogate):
        return data
    return {**data, "surrogate": {**surrogate, "calibration": "none"}}


def check_fidelity_campaign(config: CampaignConfig) -> None:
    """Refuse what a multi-fidelity campaign cannot do (yet), naming the key; and refuse
    the fidelity kinds of ``[acquisition] type`` without ``[[oracles]]``.

    Raises:
        ValueError: naming the key.
    """
    kind = config.acquisition.type
    if config.oracles is None:
        if kind in FIDELITY_KINDS:
            raise ValueError(f"acquisition.type: {kind!r} needs several fidelities ([[oracles]])")
        return
    if kind not in FIDELITY_KINDS:
        raise ValueError(
            f"acquisition.type: {kind!r} chooses candidates, not fidelities; with [[oracles]] "
            f"use one of {list(FIDELITY_KINDS)}"
        )
    refused = {
        "space": config.space.pool is None and config.space.generator is None,
        "objectives": len(config.objectives) != 1,
        "surrogate.type": config.surrogate.type != "gp",
        "surrogate.noise": config.surrogate.noise != "inferred",
        "surrogate.calibration": config.surrogate.calibration != "none",
        "stopping.min_expected_improvement": config.stopping.min_expected_improvement is not None,
        "stopping.near_hull_mev": config.stopping.near_hull_mev is not None,
        "constraints": bool(config.constraints.outcomes),
        "feasibility": config.feasibility.learn,
        "transfer": config.transfer is not None,
    }
    given = [key for key, bad in refused.items() if bad]
    if given:
        raise ValueError(
            f"{given[0]}: not available in a multi-fidelity campaign ([[oracles]]), which needs a "
            "finite pool, one objective and the default GP, without outcome constraints, learned "
            "feasibility, transfer or the surrogate-based stopping rules"
        )
