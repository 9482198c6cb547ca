"""Multi-fidelity campaigns as a Prefect flow: the emulated screen in the flow's threads and the
reference lab over HTTP on Dask, the spend per fidelity and cycle as an artifact, the same
decisions as ``alloop run``, each fidelity on its own task runner, and a run killed with
evaluations in flight at both fidelities resumed with nothing lost or measured twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import artifact_key
from flows.campaign import campaign_flow
from flows.execution import TaskRunners, build_task_runner, load_campaign
from loop.campaign import Campaign
from loop.ledger import EvaluationRecord
from oracles.lab import LabServer
from oracles.simulated import read_journal
from tests.flows.helpers import contents, evaluations
from tests.helpers import robot_entry, wait_for, write_fidelity_campaign

COSTS = {"screen": 0.25, "lab": 1.0}

DASK = (
    '[execution]\ntask_runner = "dask"\n'
    "cluster_kwargs = { n_workers = 1, threads_per_worker = 2, processes = true, dashboard_address = ':0' }"
)
"""Evaluations on a one-worker Dask cluster, unless a fidelity names its own runner."""


def _rows(data: Any) -> list[dict[str, Any]]:
    return json.loads(data) if isinstance(data, str) else list(data)


def test_emulator_and_reference_lab_over_http_run_as_a_flow_with_spend_per_fidelity_and_cycle(
    tmp_path: Path, reference_lab: LabServer
) -> None:
    journal = tmp_path / "screen.jsonl"
    path = write_fidelity_campaign(
        tmp_path,
        max_cost=5,
        screen_extra=f'journal = "{journal}"\ntask_runner = "thread"',
        lab=robot_entry(reference_lab.url),
        extra=DASK,
    )

    state = campaign_flow(str(path), return_state=True)
    report = state.result()

    ledger = evaluations(path)
    by_fidelity = Counter(e.fidelity for e in ledger)
    assert by_fidelity["screen"] > 0 and by_fidelity["lab"] > 0
    assert all(e.status == "done" and e.cost == COSTS[e.fidelity] for e in ledger)
    assert len({(e.candidate_id, e.fidelity) for e in ledger}) == len(ledger)
    assert report.cost == pytest.approx(sum(COSTS[e.fidelity] for e in ledger)) and report.cost <= 5
    assert report.stop_reason is not None and report.stop_reason.startswith("budget spent")
    measured = {f: sorted(e.candidate_id for e in ledger if e.fidelity == f) for f in COSTS}
    runs = reference_lab.lab.store.runs("mf")  # the lab ran each of its candidates once
    assert sorted(r.candidate_id for r in runs) == measured["lab"]
    started = [e for e in read_journal(journal) if e["event"] == "started"]
    assert {e["pid"] for e in started} == {os.getpid()}, "the screen ran in the flow's threads"
    assert sorted(e["candidate"] for e in started) == measured["screen"]
    outcomes = tmp_path / ".alloop-outcomes"  # where Dask tasks keep outcomes until recorded
    assert outcomes.is_dir() and not any(outcomes.iterdir()), "the lab's evaluations ran on Dask"

    keys = [artifact_key("mf", kind) for kind in ("spend", "batch")]
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=keys), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    spend = sorted((a for a in artifacts if a.key == keys[0]), key=lambda a: a.created)
    assert len(spend) == report.cycles_run, "one spend table per cycle"
    expected: dict[tuple[int, str], list[EvaluationRecord]] = {}
    for e in ledger:
        expected.setdefault((e.cycle, e.fidelity), []).append(e)
    table = _rows(spend[-1].data)
    assert [(row["cycle"], row["fidelity"]) for row in table] == sorted(expected)
    for row in table:
        of_pair = expected[(row["cycle"], row["fidelity"])]
        assert row["experiments"] == len(of_pair)
        assert row["cost"] == pytest.approx(sum(e.cost for e in of_pair))
        assert row["fidelity cost so far"] == pytest.approx(
            sum(e.cost for e in ledger if e.fidelity == row["fidelity"] and e.cycle <= row["cycle"])
        )
    assert sum(row["cost"] for row in table) == pytest.approx(report.cost)
    batch = _rows(max((a for a in artifacts if a.key == keys[1]), key=lambda a: a.created).data)
    assert {(row["fidelity"], row["cost"]) for row in batch} <= {(f, c) for f, c in COSTS.items()}

    evaluated = [t for t in task_runs if t.name.startswith("evaluate-")]
    for fidelity in COSTS:
        of_fidelity = [t for t in evaluated if f"fidelity:{fidelity}" in t.tags]
        assert len(of_fidelity) == by_fidelity[fidelity]
        assert all(t.name.startswith("evaluate-mf-c") and f"-{fidelity}-" in t.name for t in of_fidelity)


def test_the_flow_decides_as_alloop_run_does(tmp_path: Path) -> None:
    plain, flowed = tmp_path / "plain", tmp_path / "flowed"
    plain.mkdir(), flowed.mkdir()
    paths = [write_fidelity_campaign(folder, kind="mf_ucb", max_cost=5) for folder in (plain, flowed)]
    campaign = Campaign.from_file(paths[0])
    try:
        reference = campaign.run()
    finally:
        campaign.close()

    report = campaign_flow(str(paths[1]))

    assert contents(paths[1]) == contents(paths[0])
    assert (report.cycles_run, report.stop_reason, report.cost) == (
        reference.cycles_run,
        reference.stop_reason,
        reference.cost,
    )


def test_each_fidelity_runs_where_its_entry_says_else_where_execution_says(tmp_path: Path) -> None:
    path = write_fidelity_campaign(tmp_path, screen_extra='task_runner = "thread"', extra=DASK)
    config, execution = load_campaign(path)
    campaign = Campaign.open(config)
    try:
        with TaskRunners(campaign, execution) as runners:
            assert (runners.kind("screen"), runners.kind("lab")) == ("thread", "dask")
            screen, lab = (next(e for e in _proposed(campaign) if e.fidelity == f) for f in ("screen", "lab"))
            assert runners.runner(screen) is runners.runner(screen) is not runners.runner(lab)
            assert runners.runner(lab).kind == "dask" and runners.runner(screen).kind == "thread"
            assert isinstance(build_task_runner(execution, 3, "thread"), ThreadPoolTaskRunner)
            assert runners.runner(lab).runner is None, "nothing started before the first evaluation"
    finally:
        campaign.close()


def _proposed(campaign: Campaign) -> list[EvaluationRecord]:
    """The first cycle's design, committed (it has both fidelities)."""
    cycle, _, _ = campaign.open_batch()
    batch, _ = campaign.decide(campaign.fit(cycle), cycle)
    return batch


@pytest.mark.slow
def test_a_flow_run_killed_with_both_fidelities_in_flight_is_resumed_losing_and_repeating_nothing(
    tmp_path: Path, reference_lab: LabServer, prefect_server: str
) -> None:
    # Long enough that a screen and the lab are both measuring for seconds, so that the poll
    # below sees it on a loaded machine too (at 0.4 s and 1.5 s it once missed every window).
    reference_lab.lab.latency_s = 3.0
    journal = tmp_path / "screen.jsonl"
    path = write_fidelity_campaign(
        tmp_path,
        max_cost=5,
        screen_extra=f'latency_s = 2.0\njournal = "{journal}"',
        lab=robot_entry(reference_lab.url),
    )
    script = f"from flows.campaign import campaign_flow; campaign_flow({str(path)!r})"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    command = [sys.executable, "-c", script]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    lab_running: set[str] = set()

    def in_flight_at_both() -> bool:
        events = read_journal(journal) if journal.exists() else []
        running = {r.candidate_id for r in reference_lab.lab.store.runs("mf") if r.status == "running"}
        lab_running.clear()
        lab_running.update(running)
        return bool(events) and events[-1]["event"] == "started" and bool(running)

    try:
        wait_for(in_flight_at_both, 180)
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    screen_in_flight = read_journal(journal)[-1]["candidate"]
    before = {(e.candidate_id, e.fidelity): e for e in evaluations(path)}
    assert before[(screen_in_flight, "screen")].status == "submitted"
    lab_in_flight = {c for c in lab_running if before[(c, "lab")].status == "submitted"}
    assert lab_in_flight, "the flow died while the lab measured"

    report = campaign_flow(str(path))

    after = {(e.candidate_id, e.fidelity): e for e in evaluations(path)}
    assert len(after) == len(evaluations(path)), "one evaluation per (candidate, fidelity)"
    for key, old in before.items():  # nothing lost: every result kept as it was
        if old.status == "done":
            assert after[key].values == old.values
    for candidate in lab_in_flight:  # the lab's run outlived the flow: re-attached, not lost
        assert after[(candidate, "lab")].status == "done"
    settled = after[(screen_in_flight, "screen")]
    assert settled.status == "failed" and "interrupted" in (settled.error or "")
    screen_starts = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
    assert max(screen_starts.values()) == 1, "no candidate was sent to the screen twice"
    lab_runs = Counter(r.candidate_id for r in reference_lab.lab.store.runs("mf"))
    assert max(lab_runs.values()) == 1 and set(lab_runs) == {c for c, f in after if f == "lab"}
    assert all(e.status in ("done", "failed") for e in after.values())
    assert report.cost == pytest.approx(sum(COSTS[f] for _, f in after)) and report.cost <= 5
