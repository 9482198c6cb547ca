"""``[stopping]``: the budget, and the rules that may end a campaign before it is spent.

Not part of the campaign's identity: a resumed campaign may be given a larger budget.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from loop.config_base import Strict
from loop.config_space import ObjectiveConfig, SpaceSection


class StoppingSection(Strict):
    max_experiments: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1)
    """Stop after this many cycles without improving the best value."""
    min_expected_improvement: float | None = Field(default=None, ge=0)
    """Stop when the best expected improvement over the space falls below this."""
    near_hull_mev: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Structure pools: the goal of finding every structure within this many meV/atom of the
    convex hull; met (and the campaign stops) once no unevaluated candidate's lower bound of
    formation energy, mean - ``near_hull_sigmas`` · std, comes that close to the current hull."""
    near_hull_sigmas: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    """Standard deviations of the surrogate below its mean where the near-hull rule's bound lies."""

    @model_validator(mode="after")
    def _has_budget(self) -> StoppingSection:
        if self.max_experiments is None and self.max_cost is None:
            raise ValueError("set a budget: 'max_experiments' or 'max_cost'")
        if "near_hull_sigmas" in self.model_fields_set and self.near_hull_mev is None:
            raise ValueError("'near_hull_sigmas' applies only with 'near_hull_mev'")
        return self

    def check_goal(self, objectives: list[ObjectiveConfig], space: SpaceSection) -> None:
        """Refuse a near-hull goal where it means nothing: it needs formation energies measured
        and a structure pool, whose candidates have compositions on the hull.

        Raises:
            ValueError: naming ``stopping.near_hull_mev``.
        """
        if self.near_hull_mev is None:
            return
        names = [o.name for o in objectives]
        if "formation_energy_per_atom" not in names:
            raise ValueError(
                "stopping.near_hull_mev: the near-hull goal needs the objective "
                f"'formation_energy_per_atom'; the objectives are {names}"
            )
        if space.generator is None or space.generator.type != "structures":
            raise ValueError(
                "stopping.near_hull_mev: the near-hull goal needs a structure pool "
                "([space.generator] type = 'structures')"
            )
