"""Transfer from past campaigns: their results, read from a ledger, as source data.

``[transfer] campaigns = [...]`` names finished (or running) campaigns in this campaign's
ledger or in ``[transfer] ledger``; their done evaluations are encoded with this campaign's
inputs and feed :class:`~surrogates.transfer.TransferGP`. Read-only: nothing is written to
either ledger, and a campaign that is not there is refused before anything is.
"""

from __future__ import annotations

import torch
from botorch.utils.datasets import SupervisedDataset

from loop.config import CampaignConfig
from loop.errors import ConfigError, LedgerError
from loop.ledger import Ledger
from loop.pool import Pool
from loop.space import SearchSpace


def transfer_location(config: CampaignConfig) -> str:
    """The ledger that holds the source campaigns (a URL or an absolute path)."""
    assert config.transfer is not None
    location = config.transfer.ledger
    if location is None:
        return config.ledger_location
    return location if "://" in location else str(config.resolve(location))


def load_sources(config: CampaignConfig, inputs: Pool | SearchSpace) -> list[tuple[str, SupervisedDataset]]:
    """Each source campaign's done results of the objective, encoded with ``inputs``.

    Raises:
        ConfigError: naming ``transfer.ledger`` (cannot be read) or ``transfer.campaigns`` (a
            campaign that is not there, or whose results lack the objective or an input).
    """
    assert config.transfer is not None
    objective = config.objectives[0].name
    location = transfer_location(config)
    try:
        ledger = Ledger(location, create=False)
    except LedgerError as exc:
        raise ConfigError(f"transfer.ledger: {exc}") from None
    with ledger:
        names = ledger.campaign_names()
        sources = []
        for name in config.transfer.campaigns:
            if name not in names:
                raise ConfigError(
                    f"transfer.campaigns: no campaign {name!r} in {ledger.url}; it holds {names}"
                )
            done = [
                e for e in ledger.evaluations(ledger.campaign(name)["id"], ["done"]) if objective in e.values
            ]
            if not done:
                raise ConfigError(f"transfer.campaigns: campaign {name!r} has no results of {objective!r}")
            try:
                X = inputs.encode(e.params for e in done)
            except (KeyError, ValueError) as exc:
                raise ConfigError(
                    f"transfer.campaigns: campaign {name!r}'s candidates do not fit this space: {exc}"
                ) from None
            Y = torch.tensor([[e.values[objective]] for e in done], dtype=torch.double)
            sources.append(
                (name, SupervisedDataset(X, Y, feature_names=inputs.feature_names, outcome_names=[objective]))
            )
    return sources
