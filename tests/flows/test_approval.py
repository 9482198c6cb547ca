"""The approval gate: a paused batch is approved, edited or rejected through the Prefect API."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from flows.campaign import campaign_flow
from loop.campaign import CampaignReport
from tests.flows.helpers import evaluations


def _next_pause(seen: set[tuple[UUID, str]], timeout_s: float = 120) -> tuple[UUID, str]:
    """The next pause of a flow run not answered yet: (flow run id, pause key)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs():
                if run.state is not None and run.state.type == StateType.PAUSED:
                    pause = (run.id, str(run.state.state_details.pause_key))
                    if pause not in seen:
                        seen.add(pause)
                        return pause
            time.sleep(0.2)
    raise TimeoutError("no flow run paused")


def test_reviewer_approves_edits_and_rejects_batches(flow_campaign: Callable[..., Path]) -> None:
    path = flow_campaign(max_experiments=10, initial_designs=2, execution="approval = true")
    reports: dict[str, Any] = {}

    def run() -> None:
        try:
            reports["report"] = campaign_flow(str(path), max_cycles=3)
        except BaseException as exc:  # surfaced by the asserts below
            reports["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    seen: set[tuple[UUID, str]] = set()
    try:
        run_id, _ = _next_pause(seen)
        resume_flow_run(run_id, run_input={"decision": "approve"})
        run_id, _ = _next_pause(seen)
        resume_flow_run(run_id, run_input={"decision": "edit", "keep": ["not-a-candidate"]})
        run_id, _ = _next_pause(seen)  # asked again: the edit named no candidate of the batch
        cycle_1 = [e.candidate_id for e in evaluations(path) if e.cycle == 1]
        resume_flow_run(
            run_id, run_input={"decision": "edit", "keep": cycle_1[:1], "comment": "one is enough"}
        )
        run_id, _ = _next_pause(seen)
        resume_flow_run(run_id, run_input={"decision": "reject", "comment": "too close to cycle 1"})
    finally:
        worker.join(timeout=180)
    assert "error" not in reports, reports.get("error")

    report: CampaignReport = reports["report"]
    by_cycle: dict[int, list[tuple[str, str | None]]] = {}
    for e in evaluations(path):
        by_cycle.setdefault(e.cycle, []).append((e.status, e.error))
    assert by_cycle[0] == [("done", None), ("done", None)]
    assert by_cycle[1] == [("done", None), ("failed", "dropped by reviewer: one is enough")]
    assert by_cycle[2] == [("failed", "rejected by reviewer: too close to cycle 1")] * 2
    assert report.cycles_run == 3 and report.experiments == 3, "rejected candidates cost no budget"
