"""A campaign's labelled frames, read from its ledger, for surrogates that learn structures.

The DFT oracle records each relaxed structure with its energy, forces and stress (the result's
typed ``frame``, the ledger's ``evaluations.frame``) and, in the metadata, the elemental
reference energies its formation energy was computed against. :func:`labelled_frame` is the
one place that reads them off an evaluation record; :class:`LedgerFrames` gives a surrogate
every done evaluation's frame when it fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loop.frame import Frame
from loop.ledger import EvaluationRecord, Ledger
from surrogates.committee_surrogate import TrainingSet


def labelled_frame(record: EvaluationRecord) -> tuple[Frame, dict[str, float]] | None:
    """The labelled frame of a done evaluation and its elemental references (eV/atom), or
    ``None`` when the oracle recorded no structure with energy and forces."""
    if record.frame is None:
        return None
    metadata: Mapping[str, Any] = record.metadata or {}
    references = {str(k): float(v) for k, v in (metadata.get("references_ev_per_atom") or {}).items()}
    return record.frame, references


class LedgerFrames:
    """Every labelled frame of one campaign, read from its ledger on each call.

    Args:
        location: The ledger (a file path or an SQLAlchemy URL).
        campaign: The campaign's name.
    """

    def __init__(self, location: str, campaign: str) -> None:
        self.location, self.campaign = location, campaign

    def __call__(self) -> TrainingSet:
        with Ledger(self.location, create=False) as ledger:
            campaign_id = int(ledger.campaign(self.campaign)["id"])
            records = ledger.evaluations(campaign_id, ["done"])
        frames: list[Frame] = []
        references: dict[str, float] = {}
        for record in records:
            labelled = labelled_frame(record)
            if labelled is not None:
                frames.append(labelled[0])
                references.update(labelled[1])
        return TrainingSet(frames, references)
