"""Scheduled deployments: a campaign that advances by N cycles on a cron schedule.

:func:`build_deployment` makes a Prefect deployment of :func:`~flows.campaign.campaign_flow`
whose every run advances the campaign by ``cycles_per_run`` cycles from its ledger;
:func:`serve_campaign` serves it from this process (``flow.serve``: no work pool needed)
until interrupted. For ``prefect deploy`` with a process work pool, see
``examples/scheduled/prefect.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from pydantic import ValidationError

from flows.campaign import campaign_flow
from flows.execution import load_campaign


def deployment_name(campaign: str) -> str:
    """The deployment's default name: the campaign's, lowercased, with dashes."""
    return re.sub(r"[^a-z0-9]+", "-", campaign.lower()).strip("-") or "campaign"


def build_deployment(
    config: str | Path, cron: str, cycles_per_run: int = 1, name: str | None = None
) -> RunnerDeployment:
    """A deployment whose runs each advance the campaign in ``config`` by ``cycles_per_run`` cycles.

    Args:
        config: The campaign's TOML file (validated now; runs read it again, so ``[stopping]``
            may be raised between runs).
        cron: When to run, as a cron string (``"*/30 * * * *"``: every 30 minutes).
        cycles_per_run: Cycles each run advances the campaign by at most.
        name: The deployment's name; default: the campaign's.

    Raises:
        ConfigError: the campaign file is invalid.
        ValueError: ``cron`` is not a cron string or ``cycles_per_run`` is below 1.
    """
    if cycles_per_run < 1:
        raise ValueError(f"cycles_per_run must be >= 1, got {cycles_per_run}")
    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ValueError(f"--cron {cron!r} is not a cron string such as '*/30 * * * *'") from None
    path = Path(config).resolve()
    campaign_config, _ = load_campaign(path)
    campaign = campaign_config.campaign.name
    # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
    return cast(
        RunnerDeployment,
        campaign_flow.to_deployment(
            name=name or deployment_name(campaign),
            cron=cron,
            parameters={"config": str(path), "max_cycles": cycles_per_run},
            description=f"Advance campaign {campaign!r} ({path}) by {cycles_per_run} cycle(s) per run.",
            tags=["alloop", deployment_name(campaign)],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    )


def serve_campaign(config: str | Path, cron: str, cycles_per_run: int = 1, name: str | None = None) -> None:
    """Serve the campaign's scheduled deployment from this process until interrupted."""
    from prefect import serve

    serve(build_deployment(config, cron, cycles_per_run, name))
