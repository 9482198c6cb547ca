"""Per-round discovery metrics of a structure search: did each round find near-hull structures?

From the evaluated structures of each cycle (and, where it is known, the ground truth of the
whole pool):

* **hit rate**: the fraction of a cycle's evaluated candidates that end within ``X`` meV/atom
  of the final hull: the hull of everything evaluated, or the true hull when the ground truth
  is given (measured energies are placed against it);
* **DAF** (discovery acceleration factor): hit rate over the prevalence of such structures in
  the pool (needs the ground truth); random picks score 1 on average;
* **recall**: the fraction of the truly near-hull structures found so far (needs the truth);
* **coverage**: the fraction of evaluated candidates whose measured height above the final
  hull lies in the ``level`` interval of the predicted one, ``μ - E_hull ± z σ`` (from the
  surrogate's mean and std recorded when the candidate was proposed). The same hull sits on
  both sides, so this is also the coverage of the predicted formation energy's interval.

The functions take plain data; :func:`ledger_discovery` reads it from a ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from loop.errors import SpaceError
from loop.ledger import Ledger
from loop.stability import hull_heights, phase_diagram

OBJECTIVE = "formation_energy_per_atom"


@dataclass(frozen=True)
class EvaluatedStructure:
    """One evaluated candidate, as plain data.

    Args:
        id: The candidate id.
        formula: Its formula.
        cycle: The cycle that proposed it.
        energy: Measured formation energy (eV/atom).
        mean: Predicted formation energy when proposed (eV/atom), if recorded.
        std: Its predicted standard deviation (eV/atom), if recorded.
    """

    id: str
    formula: str
    cycle: int
    energy: float
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class CycleDiscovery:
    """The metrics of one cycle (``recall`` and ``cumulative_hit_rate``: up to it)."""

    cycle: int
    evaluated: int
    hits: int
    hit_rate: float
    cumulative_hit_rate: float
    daf: float | None
    recall: float | None
    coverage: float | None


@dataclass(frozen=True)
class DiscoveryReport:
    """The whole campaign's metrics and one row per cycle."""

    within_mev: float
    level: float
    evaluated: int
    hits: int
    hit_rate: float | None
    prevalence: float | None
    daf: float | None
    recall: float | None
    coverage: float | None
    cycles: list[CycleDiscovery] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def within_hull(heights_ev: Sequence[float], within_mev: float) -> list[bool]:
    """Whether each height above the hull (eV/atom) is within ``within_mev`` meV/atom of it."""
    if not within_mev >= 0:
        raise SpaceError(f"within_mev must be >= 0, got {within_mev}")
    return [h * 1000.0 <= within_mev + 1e-9 for h in heights_ev]


def interval_coverage(
    means: Sequence[float], stds: Sequence[float], actual: Sequence[float], level: float = 0.9
) -> float | None:
    """The fraction of ``actual`` values inside their central ``level`` Gaussian interval
    ``mean ± z σ`` (``None`` for no values)."""
    if not 0 < level < 1:
        raise SpaceError(f"level must be in (0, 1), got {level}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    inside = [abs(a - m) <= z * s for m, s, a in zip(means, stds, actual, strict=True)]
    return sum(inside) / len(inside) if inside else None


def discovery_report(
    evaluated: Sequence[EvaluatedStructure],
    within_mev: float = 1.0,
    truth: Iterable[tuple[str, str, float]] | None = None,
    level: float = 0.9,
) -> DiscoveryReport:
    """The discovery metrics of the evaluated structures, per cycle and overall.

    Args:
        evaluated: The evaluated candidates (each id once).
        within_mev: ``X``: a hit ends within this many meV/atom of the final hull.
        truth: ``(id, formula, formation energy per atom)`` of every candidate of the pool; it
            gives the final hull, the prevalence, DAF and recall. Without it, the final hull is
            that of ``evaluated`` and those three are ``None``.
        level: The predicted interval whose coverage is reported.
    """
    truth = None if truth is None else list(truth)
    reference = truth if truth else [(e.id, e.formula, e.energy) for e in evaluated]
    if not reference:
        return DiscoveryReport(within_mev, level, 0, 0, None, None, None, None, None)
    diagram = phase_diagram([(formula, energy) for _, formula, energy in reference])
    heights = hull_heights(diagram, [(e.formula, e.energy) for e in evaluated])
    hits = within_hull(heights, within_mev)
    targets: set[str] = set()
    prevalence = None
    if truth:
        true_heights = hull_heights(diagram, [(formula, energy) for _, formula, energy in truth])
        targets = {
            cid for (cid, _, _), hit in zip(truth, within_hull(true_heights, within_mev), strict=True) if hit
        }
        prevalence = len(targets) / len(truth)

    # Predicted height above the final hull: the predicted mean less the hull's energy there.
    predicted = {
        i: (e.mean - (e.energy - heights[i]), e.std)
        for i, e in enumerate(evaluated)
        if e.mean is not None and e.std is not None
    }

    def summary(rows: list[int]) -> tuple[int, float | None, float | None]:
        """Hits, hit rate and coverage among ``rows`` of ``evaluated``."""
        n_hits = sum(hits[i] for i in rows)
        known = [i for i in rows if i in predicted]
        coverage = interval_coverage(
            [predicted[i][0] for i in known],
            [predicted[i][1] for i in known],
            [heights[i] for i in known],
            level,
        )
        return n_hits, (n_hits / len(rows) if rows else None), coverage

    def acceleration(rate: float | None) -> float | None:
        return None if rate is None or not prevalence else rate / prevalence

    def recall(rows: Iterable[int]) -> float | None:
        return len(targets & {evaluated[i].id for i in rows}) / len(targets) if targets else None

    per_cycle: list[CycleDiscovery] = []
    seen: list[int] = []
    for cycle in sorted({e.cycle for e in evaluated}):
        rows = [i for i, e in enumerate(evaluated) if e.cycle == cycle]
        seen += rows
        n_hits, rate, coverage = summary(rows)
        assert rate is not None
        cumulative = sum(hits[i] for i in seen) / len(seen)
        per_cycle.append(
            CycleDiscovery(
                cycle, len(rows), n_hits, rate, cumulative, acceleration(rate), recall(seen), coverage
            )
        )
    everything = list(range(len(evaluated)))
    n_hits, rate, coverage = summary(everything)
    return DiscoveryReport(
        within_mev,
        level,
        len(evaluated),
        n_hits,
        rate,
        prevalence,
        acceleration(rate),
        recall(everything),
        coverage,
        per_cycle,
    )


def evaluated_structures(ledger: Ledger, campaign: str | None = None) -> list[EvaluatedStructure]:
    """The done evaluations of a campaign that measured formation energy, with the mean and std
    recorded when each was proposed (none for random designs)."""
    row = ledger.campaign(campaign)
    names = [o["name"] for o in row["config"]["objectives"]]
    column = names.index(OBJECTIVE) if OBJECTIVE in names else None
    predicted: dict[str, tuple[float | None, float | None]] = {}
    for record in ledger.cycles(int(row["id"])):
        for chosen in record.chosen or []:
            mean, std = chosen.get("mean"), chosen.get("std")
            if column is not None and mean is not None and std is not None:
                predicted[chosen["candidate_id"]] = (mean[column], std[column])  # None if not finite
    return [
        EvaluatedStructure(
            e.candidate_id,
            str(e.params.get("formula")),
            e.cycle,
            e.values[OBJECTIVE],
            *predicted.get(e.candidate_id, (None, None)),
        )
        for e in ledger.evaluations(int(row["id"]), ["done"])
        if OBJECTIVE in e.values
    ]


def ledger_discovery(
    ledger: Ledger,
    campaign: str | None = None,
    within_mev: float = 1.0,
    truth: Iterable[tuple[str, str, float]] | None = None,
    level: float = 0.9,
) -> DiscoveryReport:
    """:func:`discovery_report` of a campaign in a ledger."""
    return discovery_report(evaluated_structures(ledger, campaign), within_mev, truth, level)
