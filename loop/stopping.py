"""Stopping rules: each says, from the ledger (and the fitted surrogate for some), whether a
campaign should stop now, and why.

A rule is one concept with one method, :meth:`StoppingRule.reason`; :func:`stopping_rules`
builds those a ``[stopping]`` section asks for. Rules that need the fitted surrogate
(``needs_surrogate``) are asked after each fit, before the batch is chosen; the others
between cycles. They judge by the distribution of a *measurement* (the predictive std, with
the fitted noise, recalibrated as ``[surrogate] calibration`` says, whatever
``calibration_applies_to`` says of the acquisition: see
:meth:`~loop.campaign.Campaign.predictive_model`), not by the latent std alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from loop.campaign import Campaign
    from loop.config import CampaignConfig
    from surrogates.base import Surrogate
    from surrogates.calibrated import CalibratedSurrogate


class StoppingRule(ABC):
    """Whether a campaign should stop now."""

    #: Whether :meth:`reason` needs the fitted surrogate (asked after a fit, never without one).
    needs_surrogate: bool = False

    @abstractmethod
    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        """The reason to stop now, or ``None`` to go on."""


class Budget(StoppingRule):
    """Stop once ``max_experiments`` experiments or ``max_cost`` cost are spent."""

    def __init__(self, max_experiments: int | None, max_cost: float | None) -> None:
        self.max_experiments, self.max_cost = max_experiments, max_cost

    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        experiments, cost = campaign.ledger.spent(campaign.id)
        if self.max_experiments is not None and experiments >= self.max_experiments:
            return f"budget spent: {experiments} of {self.max_experiments} experiments"
        if self.max_cost is not None and cost >= self.max_cost:
            return f"budget spent: cost {cost:g} of {self.max_cost:g}"
        return None


class Target(StoppingRule):
    """Stop once one done evaluation reaches every objective's target (``>=`` when
    maximising, ``<=`` when minimising)."""

    def __init__(self, targets: dict[str, tuple[float, bool]]) -> None:
        self.targets = targets  # name -> (target, maximise)

    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        for e in campaign.ledger.evaluations(campaign.id, ["done"]):
            if e.fidelity != campaign.target_fidelity:
                continue
            if all((e.values[n] >= t) if up else (e.values[n] <= t) for n, (t, up) in self.targets.items()):
                return f"target reached by {e.candidate_id}: " + ", ".join(
                    f"{n} = {e.values[n]:g}" for n in self.targets
                )
        return None


class Patience(StoppingRule):
    """Stop after ``patience`` closed cycles without improving the best (scalarised) value."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        best_by_cycle: dict[int, float] = {}
        for e in campaign.ledger.evaluations(campaign.id, ["done"]):
            if e.fidelity != campaign.target_fidelity:
                continue
            best_by_cycle[e.cycle] = max(best_by_cycle.get(e.cycle, -math.inf), campaign.score(e))
        closed = sorted(c.cycle for c in campaign.ledger.cycles(campaign.id) if c.status == "closed")
        best, last_improvement = -math.inf, None
        for cycle in closed:
            if best_by_cycle.get(cycle, -math.inf) > best:
                best, last_improvement = best_by_cycle[cycle], cycle
        stale = 0 if last_improvement is None else sum(c > last_improvement for c in closed)
        if stale >= self.patience:
            return f"no improvement for {stale} cycles (patience {self.patience})"
        return None


class PoolExhausted(StoppingRule):
    """Stop once every candidate of the pool has an evaluation."""

    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        if campaign.pool is not None and not campaign.free_pool_rows():
            return "the candidate pool is exhausted"
        return None


class ExpectedImprovement(StoppingRule):
    """Stop once the best expected improvement of a measurement (over the free pool or the
    space, predictive std) is below ``threshold``."""

    needs_surrogate = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        data = campaign.dataset()
        if surrogate is None or data is None:
            return None
        choices = None if campaign.pool is None else campaign.pool.X[campaign.free_pool_rows()]
        model = campaign.predictive_model(surrogate)
        ei = campaign.acquisition.max_expected_improvement(model, data.Y, choices, campaign.space)
        if ei < self.threshold:
            return f"expected improvement {ei:.3g} is below {self.threshold:g} ({_std_used(model)})"
        return None


class NearHull(StoppingRule):
    """Structure pools: stop once no unevaluated candidate's lower bound of formation energy
    (the surrogate's mean minus ``sigmas`` predictive standard deviations) lies within
    ``within_mev`` meV/atom of the hull of the done evaluations."""

    needs_surrogate = True
    PROPERTY = "formation_energy_per_atom"

    def __init__(self, within_mev: float, sigmas: float) -> None:
        self.within_mev, self.sigmas = within_mev, sigmas

    def reason(self, campaign: Campaign, surrogate: Surrogate | None = None) -> str | None:
        from loop.stability import hull_heights

        if surrogate is None or campaign.pool is None or not campaign.free_pool_rows():
            return None  # an exhausted pool: that rule says so
        reaching, diagram, done, model = self._reaching(campaign, surrogate)
        if reaching:
            return None
        found = sum(h * 1000.0 <= self.within_mev + 1e-9 for h in hull_heights(diagram, done))
        return (
            f"near-hull goal met: no unevaluated candidate's lower bound within {self.within_mev:g} "
            f"meV/atom of the hull ({found} structures within it found; {_std_used(model)})"
        )

    def reaching(self, campaign: Campaign, surrogate: Surrogate) -> list[tuple[int, float, float]]:
        """What keeps the rule from firing: ``(pool row, mean, std)`` (eV/atom, the std the rule
        judges by) of every unevaluated candidate whose lower bound reaches the band."""
        return self._reaching(campaign, surrogate)[0]

    def _reaching(
        self, campaign: Campaign, surrogate: Surrogate
    ) -> tuple[list[tuple[int, float, float]], PhaseDiagram, list[tuple[str, float]], CalibratedSurrogate]:
        from pymatgen.core import Composition

        from loop.stability import could_reach_hull, phase_diagram

        pool = campaign.pool
        assert pool is not None
        free = campaign.free_pool_rows()
        done = [
            (str(e.params["formula"]), e.values[self.PROPERTY])
            for e in campaign.ledger.evaluations(campaign.id, ["done"])
            if self.PROPERTY in e.values
        ]
        formulas = [str(pool.candidates[i].params["formula"]) for i in free]
        elements = sorted({el.symbol for f in formulas for el in Composition(f).elements})
        diagram = phase_diagram(done, elements)  # with the pool's elements at 0 eV/atom
        model = campaign.predictive_model(surrogate)
        mean, variance = model.predict(pool.X[free])
        column = campaign.objectives.index(self.PROPERTY)
        mu, sigma = mean[:, column], variance[:, column].sqrt()
        lower = mu - self.sigmas * sigma
        reaching = could_reach_hull(diagram, formulas, lower.tolist(), self.within_mev)
        return [(free[i], float(mu[i]), float(sigma[i])) for i in reaching], diagram, done, model


def _std_used(model: CalibratedSurrogate) -> str:
    scales = ", ".join(f"{s:.3g}" for s in model.scale.tolist())
    return f"predictive std x {scales}"


def stopping_rules(config: CampaignConfig) -> list[StoppingRule]:
    """The rules a configuration's ``[stopping]`` section (and objective targets) ask for,
    in the order they are asked."""
    section = config.stopping
    rules: list[StoppingRule] = [Budget(section.max_experiments, section.max_cost)]
    targets = {
        o.name: (o.target, o.direction == "maximize") for o in config.objectives if o.target is not None
    }
    if targets:
        rules.append(Target(targets))
    if section.patience is not None:
        rules.append(Patience(section.patience))
    rules.append(PoolExhausted())
    if section.min_expected_improvement is not None:
        rules.append(ExpectedImprovement(section.min_expected_improvement))
    if section.near_hull_mev is not None:
        rules.append(NearHull(section.near_hull_mev, section.near_hull_sigmas))
    return rules
