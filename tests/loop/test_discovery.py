"""Discovery metrics on a hand-made Cu-Au pool whose answers are known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loop.candidate import Candidate
from loop.discovery import (
    EvaluatedStructure,
    discovery_report,
    interval_coverage,
    ledger_discovery,
    within_hull,
)
from loop.errors import SpaceError
from loop.ledger import Ledger, Proposal
from oracles.base import Measurement, Result

# The true pool. Hull: Cu (0), Cu3Au (-0.07), CuAu (-0.10), Au (0); at Cu2Au the
# Cu3Au-CuAu tie line is -0.08, at CuAu2 the CuAu-Au one -0.0667, at CuAu3 -0.05.
TRUTH = [
    ("a", "CuAu", -0.100),  # on the hull
    ("b", "Cu3Au", -0.070),  # on the hull (never evaluated)
    ("c", "CuAu3", -0.030),  # 20 meV/atom above
    ("d", "CuAu", -0.095),  # 5 meV/atom above
    ("e", "Cu2Au", -0.0795),  # 0.5 meV/atom above
    ("f", "CuAu2", -0.020),  # 46.7 meV/atom above
]
ENERGY = {cid: energy for cid, _, energy in TRUTH}
FORMULA = {cid: formula for cid, formula, _ in TRUTH}
# Cycle 0: c, a (random: no prediction); cycle 1: e, f; cycle 2: d. Predicted (mean, std):
PREDICTED = {"e": (-0.080, 0.001), "f": (-0.060, 0.001), "d": (-0.096, 0.002)}
CYCLES = {"c": 0, "a": 0, "e": 1, "f": 1, "d": 2}


def evaluated() -> list[EvaluatedStructure]:
    return [
        EvaluatedStructure(cid, FORMULA[cid], cycle, ENERGY[cid], *PREDICTED.get(cid, (None, None)))
        for cid, cycle in CYCLES.items()
    ]


def test_metrics_against_the_ground_truth() -> None:
    report = discovery_report(evaluated(), within_mev=1.0, truth=TRUTH)
    assert report.prevalence == pytest.approx(3 / 6)  # a, b, e
    assert (report.evaluated, report.hits) == (5, 2)
    assert report.hit_rate == pytest.approx(2 / 5)
    assert report.daf == pytest.approx(0.8)
    assert report.recall == pytest.approx(2 / 3)
    # e: predicted 0 ± 1.645 meV above the hull, is 0.5 (inside); f: predicted 13.3, is 46.7
    # (outside); d: predicted 4 ± 3.3, is 5 (inside).
    assert report.coverage == pytest.approx(2 / 3)
    rows = [
        (c.cycle, c.evaluated, c.hits, c.hit_rate, c.cumulative_hit_rate, c.daf, c.recall, c.coverage)
        for c in report.cycles
    ]
    expected = [
        (0, 2, 1, 0.5, 0.5, 1.0, 1 / 3, None),
        (1, 2, 1, 0.5, 0.5, 1.0, 2 / 3, 0.5),
        (2, 1, 0, 0.0, 0.4, 0.0, 2 / 3, 1.0),
    ]
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert got == pytest.approx(want)
    assert report.as_dict()["cycles"][2]["recall"] == pytest.approx(2 / 3)


def test_without_truth_the_final_hull_is_that_of_the_evaluated() -> None:
    # Without Cu3Au, Cu2Au is on the evaluated hull; at 5 meV/atom the second CuAu counts too.
    report = discovery_report(evaluated(), within_mev=5.0)
    assert (report.hits, report.hit_rate) == (3, pytest.approx(3 / 5))
    assert report.prevalence is None and report.daf is None and report.recall is None
    assert [c.hits for c in report.cycles] == [1, 1, 1]
    assert [c.daf for c in report.cycles] == [None, None, None]


def test_nothing_evaluated() -> None:
    report = discovery_report([], truth=None)
    assert (report.evaluated, report.hit_rate, report.cycles) == (0, None, [])
    assert discovery_report([], truth=TRUTH).recall == 0.0


def test_interval_coverage_and_within_hull() -> None:
    # z(90%) = 1.645: 1.6 sigma off is inside, 1.7 and 1.75 are not.
    assert interval_coverage([0.0, 0.0, 1.0], [1.0, 1.0, 2.0], [1.6, -1.7, 4.5], level=0.9) == pytest.approx(
        1 / 3
    )
    assert interval_coverage([0.0], [1.0], [1.7], level=0.95) == 1.0
    assert interval_coverage([], [], []) is None
    assert within_hull([0.0, 0.001, 0.0011], 1.0) == [True, True, False]
    with pytest.raises(SpaceError, match="level must be in"):
        interval_coverage([0.0], [1.0], [0.0], level=1.0)
    with pytest.raises(SpaceError, match="within_mev must be >= 0"):
        within_hull([0.0], -1.0)


def hand_made_ledger(path: Path, config: dict[str, Any]) -> Ledger:
    """A ledger whose campaign ``hull`` evaluated :data:`CYCLES` with :data:`PREDICTED`."""
    ledger = Ledger(path)
    campaign = ledger.open_campaign("hull", config, "hash", seed=0)
    run = ledger.start_run(campaign)
    for cycle in range(3):
        assert ledger.open_cycle(campaign, run) == cycle
        chosen = [cid for cid, c in CYCLES.items() if c == cycle]
        proposals = [
            Proposal(
                Candidate({"formula": FORMULA[cid], "label": cid}, cid),
                0.5,
                None if cid not in PREDICTED else [PREDICTED[cid][0]],
                None if cid not in PREDICTED else [PREDICTED[cid][1]],
            )
            for cid in chosen
        ]
        for evaluation_id, cid in zip(
            ledger.propose(campaign, run, cycle, proposals, "hull_probability", None), chosen, strict=True
        ):
            ledger.mark_submitted(evaluation_id)
            measurement = Measurement(ENERGY[cid], None, "eV/atom")
            ledger.record_result(evaluation_id, Result(cid, {"formation_energy_per_atom": measurement}), run)
        ledger.close_cycle(campaign, cycle)
    return ledger


def test_ledger_discovery_reads_cycles_energies_and_predictions(tmp_path: Path) -> None:
    config = {"objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}]}
    with hand_made_ledger(tmp_path / "ledger.db", config) as ledger:
        from_ledger = ledger_discovery(ledger, "hull", within_mev=1.0, truth=TRUTH)
    assert from_ledger == discovery_report(evaluated(), within_mev=1.0, truth=TRUTH)
