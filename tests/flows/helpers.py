"""Reading a campaign's ledger back, for comparing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.execution import load_campaign
from loop.ledger import EvaluationRecord, Ledger


def evaluations(config_path: Path) -> list[EvaluationRecord]:
    """Every evaluation of the (only) campaign in the file's ledger, in proposal order."""
    config, _ = load_campaign(config_path)
    with Ledger(config.ledger_location) as ledger:
        return ledger.evaluations(int(ledger.campaign()["id"]))


def contents(config_path: Path) -> list[tuple[Any, ...]]:
    """What a campaign decided and measured: cycle, candidate, parameters, status, values,
    cost, error (not timings)."""
    return [
        (
            e.cycle,
            e.candidate_id,
            dict(e.params),
            e.status,
            {k: round(v, 12) for k, v in e.values.items()},
            e.cost,
            e.error,
        )
        for e in evaluations(config_path)
    ]
