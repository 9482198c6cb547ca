"""``alloop status --json`` and the report artifact: a structure campaign's discovery per round."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.artifacts import discovery_markdown
from loop.report import campaign_status
from tests.loop.test_discovery import hand_made_ledger

STRUCTURES = {
    "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}],
    "space": {"generator": {"type": "structures", "elements": ["Cu", "Au"]}},
}


def test_status_reports_discovery_of_a_structure_campaign(tmp_path: Path) -> None:
    # Against the hull of what was evaluated (no Cu3Au), within 1 meV/atom: CuAu (a) and
    # Cu2Au (e) are hits; CuAu3 (c), CuAu2 (f) and the second CuAu (d, 5 meV above) are not.
    with hand_made_ledger(tmp_path / "ledger.db", STRUCTURES) as ledger:
        discovery = campaign_status(ledger, "hull")["discovery"]
        markdown = discovery_markdown(ledger, "hull")
    assert discovery["within_mev"] == 1.0
    assert (discovery["evaluated"], discovery["hits"]) == (5, 2)
    assert discovery["hit_rate"] == pytest.approx(2 / 5)
    assert discovery["prevalence"] is None and discovery["daf"] is None and discovery["recall"] is None
    rounds = discovery["cycles"]
    assert [(c["cycle"], c["evaluated"], c["hits"]) for c in rounds] == [(0, 2, 1), (1, 2, 1), (2, 1, 0)]
    assert [c["hit_rate"] for c in rounds] == pytest.approx([0.5, 0.5, 0.0])
    assert [c["cumulative_hit_rate"] for c in rounds] == pytest.approx([0.5, 0.5, 0.4])
    # Predicted heights above the evaluated hull: e -0.5 ± 1.6 meV (covers its 0), f 20 ± 1.6 meV
    # (misses 60), d 4 ± 3.3 meV (covers 5): cycle 0 was random, nothing predicted.
    assert [c["coverage"] for c in rounds] == [None, 0.5, 1.0]
    assert markdown[3] == "| cycle | evaluated | hits | hit rate | cumulative hit rate | 90% coverage |"
    assert markdown[5:] == [
        "| 0 | 2 | 1 | 0.50 | 0.50 | — |",
        "| 1 | 2 | 1 | 0.50 | 0.50 | 0.50 |",
        "| 2 | 1 | 0 | 0.00 | 0.40 | 1.00 |",
    ]


def test_other_campaigns_have_no_discovery(tmp_path: Path) -> None:
    config = {"objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}]}
    with hand_made_ledger(tmp_path / "ledger.db", config) as ledger:
        assert campaign_status(ledger, "hull")["discovery"] is None
        assert discovery_markdown(ledger, "hull") == []
