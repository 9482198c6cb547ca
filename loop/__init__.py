"""alloop's engine-free closed loop: spaces, ledger, acquisition and the campaign cycle.

``from loop import Campaign`` works; names are imported on first use so that importing a
small piece (the error tree, the space) stays cheap and free of import cycles.
"""

from __future__ import annotations

from loop.lazy import lazy_exports

_EXPORTS = {
    "Acquisition": "loop.acquisition",
    "Campaign": "loop.campaign",
    "CampaignReport": "loop.campaign",
    "CycleReport": "loop.campaign",
    "CampaignConfig": "loop.config",
    "load_config": "loop.config",
    "parse_config": "loop.config",
    "Ledger": "loop.ledger",
    "CandidatePool": "loop.pool",
    "Candidate": "loop.candidate",
    "Categorical": "loop.parameters",
    "Continuous": "loop.parameters",
    "Integer": "loop.parameters",
    "LinearConstraint": "loop.parameters",
    "SearchSpace": "loop.space",
    "AlloopError": "loop.errors",
    "ConfigError": "loop.errors",
    "SpaceError": "loop.errors",
    "DuplicateCandidateError": "loop.errors",
    "LedgerError": "loop.errors",
    "CampaignError": "loop.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
