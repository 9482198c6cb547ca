"""A campaign as a Prefect flow: :func:`campaign_flow` advances a campaign from its ledger.

Each cycle is the loop's stages as tasks — ``fit-surrogate``, ``propose-batch``, one
``evaluate-candidate`` per candidate (or an ``evaluate-batch`` per ``evaluations_per_task``
candidates; submitted together to the task runner of their fidelity), and
``record-results``, which commits each result the moment it arrives — with the proposed batch,
the budget spent (in all, and per fidelity and cycle) and an end-of-run report as artifacts.
A multi-fidelity campaign (``[[oracles]]``) runs the same stages: the campaign's own methods
choose the (candidate, fidelity) pairs and charge their costs. The ledger is the single source of
truth: a run may crash anywhere, and the next run recovers evaluations left in flight,
dispatches a batch that was proposed but not sent, and goes on; nothing is lost and nothing is
evaluated twice. Only one run of a campaign works at a time (:mod:`loop.lease`).
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.approval import review_batch
from flows.artifacts import (
    BudgetProgress,
    artifact_key,
    batch_rows,
    publish_batch,
    publish_report,
    publish_spend,
)
from flows.execution import ExecutionSection, TaskRunners, dispatch, execution_of, load_campaign
from flows.tasks import fit_surrogate, propose_batch, record_results, recover_stranded
from loop.campaign import Campaign, CampaignReport, CycleReport
from loop.config import CampaignConfig
from loop.lease import CampaignBusy, CampaignLease
from loop.ledger import EvaluationRecord


def resolve_campaign(
    config: str | Path | CampaignConfig, execution: ExecutionSection | None = None
) -> tuple[CampaignConfig, ExecutionSection]:
    """The configuration and ``[execution]`` section of a file, or of a configuration object.

    An explicit ``execution`` wins over the file's section.

    Raises:
        ConfigError: the file is missing or invalid (the message names the key).
    """
    if isinstance(config, CampaignConfig):
        return config, execution if execution is not None else execution_of(config)
    loaded, own = load_campaign(config)
    return loaded, execution if execution is not None else own


def _campaign_name(config: Any) -> str:
    if isinstance(config, CampaignConfig):
        return config.campaign.name
    if isinstance(config, dict):
        return str(config.get("campaign", {}).get("name", "campaign"))
    try:
        return str(tomllib.loads(Path(config).read_text())["campaign"]["name"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "campaign"


def _flow_run_name() -> str:
    return _campaign_name(flow_run.parameters.get("config"))


def _rename(name: str) -> None:
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_name(context.flow_run.id, name)


@flow(name="alloop-campaign", flow_run_name=_flow_run_name, persist_result=False)
def campaign_flow(
    config: str | Path | CampaignConfig,
    max_cycles: int | None = None,
    execution: ExecutionSection | None = None,
) -> CampaignReport:
    """Advance a campaign by up to ``max_cycles`` cycles (all the way when ``None``).

    Args:
        config: The campaign's TOML file, or its validated configuration.
        max_cycles: Cycles to run now at most; ``None`` runs until a stopping rule fires.
        execution: How to run it; default: the file's ``[execution]`` section.

    Returns:
        Where the campaign stands; ``cycles_run`` is 0 when another run held the campaign.

    Raises:
        ConfigError: the configuration is invalid.
        ValueError: ``max_cycles`` is below 1.
    """
    if max_cycles is not None and max_cycles < 1:
        raise ValueError(f"max_cycles must be >= 1 (or None for no limit), got {max_cycles}")
    campaign_config, execution = resolve_campaign(config, execution)
    logger = get_run_logger()
    campaign = Campaign.open(campaign_config)
    try:
        label = f"flow run {flow_run.name or '?'} ({flow_run.id or 'no id'})"
        lock = CampaignLease(
            campaign.ledger,
            campaign.name,
            label,
            wait_s=execution.lock_wait_s,
            lease_s=execution.lock_lease_s,
            logger=logger,
        )
        try:
            lock.acquire()
        except CampaignBusy as exc:
            logger.warning("%s; this run exits without touching the campaign", exc)
            experiments, cost = campaign.ledger.spent(campaign.id)
            return CampaignReport(campaign.name, 0, None, experiments, cost, campaign.best())
        try:
            return _advance(campaign, execution, max_cycles, logger)
        finally:
            lock.release()
    finally:
        campaign.close()


def _advance(
    campaign: Campaign,
    execution: ExecutionSection,
    max_cycles: int | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> CampaignReport:
    """The body of :meth:`Campaign.run`, with the stages as tasks and artifacts per cycle."""
    with TaskRunners(campaign, execution) as runners:
        recover_stranded.with_options(task_run_name=f"recover-{artifact_key(campaign.name, 'run')}")(campaign)
        progress = BudgetProgress(campaign)
        reports: list[CycleReport] = []
        stop = campaign.stop_reason()
        while stop is None and (max_cycles is None or len(reports) < max_cycles):
            report = _run_cycle(
                campaign, execution, runners, first_cycle=reports[0].cycle if reports else None
            )
            reports.append(report)
            progress.update()
            publish_spend(campaign)
            logger.info(
                "campaign %s, cycle %d: %d proposed, %d done, %d failed; %d experiments; best %s",
                campaign.name,
                report.cycle,
                report.proposed,
                report.done,
                report.failed,
                report.experiments,
                "—" if report.best is None else f"{report.best:.4g}",
            )
            stop = report.stop_reason or campaign.stop_reason()
    result = campaign.finish(stop, reports)
    publish_report(campaign, result)
    return result


def _run_cycle(
    campaign: Campaign, execution: ExecutionSection, runners: TaskRunners, first_cycle: int | None
) -> CycleReport:
    """One cycle, as :meth:`Campaign.run_cycle` composes it, with the stages as tasks."""
    cycle, batch, undecided = campaign.open_batch()
    tag = f"{artifact_key(campaign.name, f'c{cycle}')}"
    _rename(
        f"{campaign.name}/cycle-{cycle}"
        if first_cycle is None
        else f"{campaign.name}/cycles-{first_cycle}-{cycle}"
    )
    stop_reason = None
    if undecided:
        surrogate = fit_surrogate.with_options(task_run_name=f"fit-{tag}")(campaign, cycle)
        batch, stop_reason = propose_batch.with_options(task_run_name=f"propose-{tag}")(
            campaign, surrogate, cycle
        )
    proposed = len(batch)
    outcomes: list[str | None] = []
    if batch:
        rows = batch_rows(campaign, cycle, batch)
        publish_batch(campaign, cycle, batch)
        if execution.approval:
            batch = review_batch(campaign, cycle, batch, rows, execution.approval_timeout_s)
        outcomes = _evaluate(campaign, execution, runners, tag, batch)
    return campaign.close_cycle(cycle, proposed, outcomes, stop_reason)


def _evaluate(
    campaign: Campaign,
    execution: ExecutionSection,
    runners: TaskRunners,
    tag: str,
    batch: list[EvaluationRecord],
) -> list[str | None]:
    """Mark the batch submitted, submit its tasks (:func:`~flows.execution.dispatch`), record
    each evaluation as it finishes."""
    if not batch:
        return []
    for evaluation in batch:
        campaign.ledger.mark_submitted(evaluation.id)
    with dispatch(campaign, execution, runners, tag, batch) as futures:
        quoted: Any = quote(futures)  # Prefect must not wait for the futures before the task
        return record_results.with_options(task_run_name=f"record-{tag}")(campaign, quoted)
