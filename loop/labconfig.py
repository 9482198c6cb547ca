"""Configuration of lab-grade optimisation: Pareto search, outcome constraints, learned
feasibility and transfer from past campaigns.

``[[objectives]]`` without any ``weight`` (two or more of them) means a Pareto search; a
weight on any objective means today's scalarisation (missing weights are 1). The sections
are checked against the rest of the file once, here, with one message naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from loop.config_base import Strict

if TYPE_CHECKING:
    from loop.config import CampaignConfig

PARETO_KINDS = ("qlognehvi", "qparego")
#: Kinds that take outcome constraints and a feasibility weight (log-valued Monte Carlo).
MODELLED_KINDS = ("qlogei", "qlognei", *PARETO_KINDS)


class OutcomeConstraintConfig(Strict):
    """``name op value``: an outcome the surrogate models and the acquisition keeps in limits."""

    name: str = Field(min_length=1)
    op: Literal["<=", ">="]
    value: float = Field(allow_inf_nan=False)


class ConstraintsSection(Strict):
    outcomes: list[OutcomeConstraintConfig] = []  # noqa: RUF012 (a pydantic default, copied per instance)


class FeasibilitySection(Strict):
    learn: bool = False
    """Learn P(success) from evaluations that failed for good, and weight the acquisition by it."""
    floor: float = Field(default=0.1, gt=0, le=1)
    """The least weight a candidate keeps, so uncertain regions stay within reach."""


class TransferSection(Strict):
    campaigns: list[str] = Field(min_length=1)
    """Past campaigns whose results feed a multi-task GP (task = campaign)."""
    ledger: str | None = None
    """Their ledger (a file or an SQLAlchemy URL); default: this campaign's ledger."""


def normalise_objectives(data: Any) -> Any:
    """Before validation: fill missing weights with 1 unless the objectives ask for a Pareto
    search (several, none weighted), and make qLogNEHVI the default acquisition of one."""
    if not isinstance(data, Mapping) or not isinstance(data.get("objectives"), list):
        return data
    objectives = data["objectives"]
    if not all(isinstance(o, Mapping) for o in objectives):
        return data
    data = dict(data)
    if is_pareto(objectives):
        acquisition = dict(data.get("acquisition") or {})
        acquisition.setdefault("type", "qlognehvi")
        data["acquisition"] = acquisition
    else:
        data["objectives"] = [{"weight": 1.0, **o} if o.get("weight") is None else o for o in objectives]
    return data


def is_pareto(objectives: Sequence[Mapping[str, Any]]) -> bool:
    return len(objectives) > 1 and all(o.get("weight") is None for o in objectives)


def check_lab_sections(config: CampaignConfig) -> None:
    """Check the sections against the objectives, the oracle and the acquisition.

    Raises:
        ValueError: naming the key (``constraints.outcomes``, ``acquisition.reference_point``...).
    """
    names = [o.name for o in config.objectives]
    pareto = is_pareto([o.model_dump() for o in config.objectives])
    kind = config.acquisition.type
    if pareto and kind not in (*PARETO_KINDS, "random"):
        raise ValueError(
            f"acquisition.type: {kind!r} optimises one number, but objectives {names} have no weights "
            f"(a Pareto search): use one of {list(PARETO_KINDS)}, or give the objectives weights"
        )
    if not pareto and kind in PARETO_KINDS:
        raise ValueError(f"acquisition.type: {kind!r} needs two or more objectives without weights")
    reference = config.acquisition.reference_point
    if reference is not None and not pareto:
        raise ValueError(
            "acquisition.reference_point: applies to a Pareto search (objectives without weights)"
        )
    if reference is not None and len(reference) != len(names):
        raise ValueError(
            f"acquisition.reference_point: {len(reference)} values for {len(names)} objectives {names}"
        )
    if config.acquisition.trust_region is not None and not pareto:
        raise ValueError("acquisition.trust_region: applies to a Pareto search (objectives without weights)")
    if config.acquisition.trust_region is not None and config.space.constraints:
        raise ValueError("acquisition.trust_region: needs a space without linear constraints")
    known = [*names, *extra_properties(config)]
    for constraint in config.constraints.outcomes:
        if constraint.name not in known:
            raise ValueError(
                f"constraints.outcomes: unknown outcome {constraint.name!r}; "
                f"the objectives and measured properties are {known}"
            )
    if (config.constraints.outcomes or config.feasibility.learn) and kind not in (*MODELLED_KINDS, "random"):
        raise ValueError(
            f"acquisition.type: {kind!r} cannot take outcome constraints or learned feasibility; "
            f"use one of {list(MODELLED_KINDS)}"
        )
    if config.transfer is not None and len(modelled_outcomes(config)) != 1:
        raise ValueError(
            "transfer: applies to campaigns with one modelled outcome (one objective, no constraint)"
        )


def extra_properties(config: CampaignConfig) -> list[str]:
    """Properties the oracle is declared to measure besides the objectives."""
    return list(getattr(config.primary_oracle, "properties", {}) or {})


def modelled_outcomes(config: CampaignConfig) -> list[str]:
    """What the surrogate models: the objectives, then outcomes only a constraint reads."""
    names = [o.name for o in config.objectives]
    extra = [c.name for c in config.constraints.outcomes if c.name not in names]
    return [*names, *dict.fromkeys(extra)]


def drop_unset(identity: dict[str, Any], config: CampaignConfig) -> dict[str, Any]:
    """The campaign's identity without these sections where they are not used, so that a
    campaign written before they existed keeps its hash."""
    for key in ("constraints", "feasibility", "transfer", "oracle", "oracles"):
        if key not in config.model_fields_set:
            identity.pop(key, None)
    for key in ("reference_point", "trust_region"):
        if getattr(config.acquisition, key) is None:
            identity.get("acquisition", {}).pop(key, None)
    for objective in identity.get("objectives", []):
        if not objective.get("log_scale"):
            objective.pop("log_scale", None)
    return identity
