"""``[acquisition]``: which strategy chooses the next batch, and its knobs.

The hull-aware kinds are checked against the objectives and the space once the whole file
is read; a key of one kind given with another is refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from loop.config_base import NonNegative, Strict
from loop.config_space import ObjectiveConfig, SpaceSection


class AcquisitionSection(Strict):
    type: Literal[
        "ucb",
        "qlogei",
        "qlognei",
        "max_variance",
        "thompson",
        "random",
        "qlognehvi",
        "qparego",
        "hull_probability",
        "hull_lcb",
        "hull_thompson",
        "hull_membership",
        "mf_mes",
        "mf_ucb",
        "mf_hull",
        "funnel",
    ] = "qlognei"
    beta: NonNegative = 1.0
    """UCB/LCB: mean ± sqrt(beta) · std (beta = 1 is one standard deviation)."""
    within_mev: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """``hull_probability``: the probability of landing within this many meV/atom of the
    current hull is maximised (default 0: on or below it); ``hull_membership``: of the hull
    of a posterior draw of the whole pool."""
    batch_size: int = Field(default=1, ge=1, le=1000)
    initial_designs: int = Field(default=4, ge=1)
    """Random designs before the first model fit."""
    chunk_size: int = Field(default=4096, ge=1)
    """Pool candidates scored per chunk (memory grows with chunk_size x n)."""
    num_restarts: int = Field(default=10, ge=1)
    raw_samples: int = Field(default=256, ge=1)
    mc_samples: int = Field(default=128, ge=1)
    max_iterations: int = Field(default=200, ge=1)
    """Iterations of the continuous optimiser per restart."""
    reference_point: list[float] | None = None
    """Pareto search: the hypervolume's reference point, one value per objective in its own
    sign and units (default: inferred from the front)."""
    trust_region: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    """Pareto search in a space without linear constraints: search only a box of this side (a
    fraction of each range; 0.8 is TuRBO's start) around the result that adds the most
    hypervolume, once one is above the reference point (default: the whole space)."""

    @model_validator(mode="after")
    def _within_for_hull(self) -> AcquisitionSection:
        if self.within_mev is not None and self.type not in ("hull_probability", "hull_membership"):
            raise ValueError("'within_mev' applies only with type = 'hull_probability' or 'hull_membership'")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_within(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Campaigns written before 'within_mev' existed keep their configuration hash.
        data: dict[str, Any] = handler(self)
        if data.get("within_mev") is None:
            data.pop("within_mev", None)
        return data

    def check_hull(self, objectives: list[ObjectiveConfig], space: SpaceSection) -> None:
        """Refuse a hull-aware acquisition where there is no hull: it needs formation energy
        per atom as the one, minimised, objective and a structure pool (compositions).

        Raises:
            ValueError: naming ``acquisition.type``.
        """
        if self.type not in ("hull_probability", "hull_lcb", "hull_thompson", "hull_membership", "mf_hull"):
            return
        if [(o.name, o.direction) for o in objectives] != [("formation_energy_per_atom", "minimize")]:
            raise ValueError(
                f"acquisition.type = {self.type!r} needs one objective, 'formation_energy_per_atom', "
                f"minimised; the objectives are {[o.name for o in objectives]}"
            )
        if space.generator is None or space.generator.type != "structures":
            raise ValueError(
                f"acquisition.type = {self.type!r} needs a structure pool "
                "([space.generator] type = 'structures')"
            )
