"""A human approval gate: before a batch is dispatched, a person approves, rejects or edits it.

With ``[execution] approval = true`` the flow run pauses before each batch
(:func:`prefect.flow_runs.pause_flow_run` with ``wait_for_input``) and shows the batch as the
pause's description; the Prefect UI's *Resume* form, or
:func:`prefect.flow_runs.resume_flow_run` with ``run_input``, answers with a
:class:`BatchDecision`:

* ``approve`` — dispatch the batch as proposed;
* ``reject`` — dispatch nothing; the batch is recorded as failed ("rejected by reviewer"),
  costs no budget and is never proposed again; the next cycle proposes anew;
* ``edit`` — dispatch only the candidates listed in ``keep``; the others are recorded as
  dropped by the reviewer.

A pause that times out fails the flow run and leaves the batch ``proposed`` in the ledger:
the next run asks again. In async code, resume with the awaited ``aresume_flow_run`` (or
``await resume_flow_run(...)``): an un-awaited coroutine resumes nothing and the pause
silently times out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from loop.campaign import Campaign
from loop.ledger import EvaluationRecord

log = logging.getLogger("alloop.flows")

#: How often a paused run asks the Prefect API whether it was resumed (seconds).
POLL_INTERVAL_S = 2


class BatchDecision(RunInput):
    """A reviewer's answer to a proposed batch."""

    decision: Literal["approve", "reject", "edit"] = "approve"
    keep: list[str] = Field(default_factory=list)
    """With ``edit``: the candidate ids to dispatch (the rest are dropped)."""
    comment: str = ""


def describe_batch(campaign: Campaign, cycle: int, rows: Sequence[dict[str, object]]) -> str:
    """The markdown shown on the pause: the batch as a table and how to answer."""
    if not rows:
        return f"Campaign **{campaign.name}**, cycle {cycle}: empty batch."
    columns = list(rows[0])
    lines = [
        f"Campaign **{campaign.name}**, cycle {cycle}: approve this batch before it is dispatched.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join("—" if row[c] is None else str(row[c]) for c in columns) + " |")
    lines += [
        "",
        "Answer `approve`, `reject`, or `edit` with `keep` = the candidate ids to dispatch.",
    ]
    return "\n".join(lines)


def review_batch(
    campaign: Campaign,
    cycle: int,
    batch: Sequence[EvaluationRecord],
    rows: Sequence[dict[str, object]],
    timeout_s: int,
) -> list[EvaluationRecord]:
    """Pause for a reviewer; returns the part of the batch to dispatch (the rest is recorded).

    Raises:
        prefect.exceptions.FlowPauseTimeout: nobody answered within ``timeout_s``.
    """
    ids = [e.candidate_id for e in batch]
    while True:
        answer = pause_flow_run(
            wait_for_input=BatchDecision.with_initial_data(description=describe_batch(campaign, cycle, rows)),
            timeout=timeout_s,
            poll_interval=POLL_INTERVAL_S,
        )
        unknown = [c for c in answer.keep if c not in ids]
        if answer.decision == "edit" and (unknown or not answer.keep):
            log.error(
                "campaign %s, cycle %d: an 'edit' must keep some of %s; got %s; asking again",
                campaign.name,
                cycle,
                ids,
                answer.keep,
            )
            continue
        break
    keep = (
        set(ids) if answer.decision == "approve" else set(answer.keep) if answer.decision == "edit" else set()
    )
    note = f": {answer.comment}" if answer.comment else ""
    for evaluation in batch:
        if evaluation.candidate_id not in keep:
            reason = "rejected by reviewer" if answer.decision == "reject" else "dropped by reviewer"
            campaign.record_failure(evaluation, reason + note, retryable=False)
    log.warning(
        "campaign %s, cycle %d: reviewer chose %s; dispatching %d of %d",
        campaign.name,
        cycle,
        answer.decision,
        len(keep),
        len(ids),
    )
    return [e for e in batch if e.candidate_id in keep]
