"""One campaign, one writer: overlapping flow runs, and a run killed mid-cycle."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.campaign import campaign_flow
from flows.execution import ExecutionSection
from loop.campaign import CampaignReport
from loop.config import load_config
from loop.ledger import Ledger
from loop.schema import leases
from oracles.simulated import read_journal
from tests.flows.helpers import evaluations
from tests.helpers import kill_mid_experiment, wait_for
from tests.loop.test_lease import alloop


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _lock_held(path: Path) -> bool:
    with Ledger(load_config(path).ledger_location) as ledger, ledger.engine.connect() as conn:
        try:
            return conn.execute(leases.select()).first() is not None
        except Exception:  # the table does not exist yet
            return False


def test_overlapping_runs_never_double_spend(flow_campaign: Callable[..., Path], tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    path = flow_campaign(max_experiments=8, oracle_extra=f'latency_s = 2.0\njournal = "{journal}"')
    lines = _Lines()
    logging.getLogger("prefect.flow_runs").addHandler(lines)
    reports: dict[str, CampaignReport] = {}

    def run(name: str, **options: object) -> None:
        reports[name] = campaign_flow(str(path), **options)

    first = threading.Thread(target=run, args=("first",), kwargs={"max_cycles": 2})
    waiting = threading.Thread(
        target=run, args=("waiting",), kwargs={"execution": ExecutionSection(lock_wait_s=300)}
    )
    try:
        first.start()
        wait_for(lambda: journal.exists(), timeout_s=120)  # the first run holds the lock and evaluates
        waiting.start()  # waits for the lock, then goes on from the ledger
        wait_for(lambda: any("waiting up to 300 s" in line for line in lines.lines), timeout_s=120)
        run("impatient")  # lock_wait_s = 0 (the default): exits at once
        first.join(timeout=300)
        waiting.join(timeout=300)
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(lines)

    assert reports["impatient"].cycles_run == 0
    assert reports["first"].cycles_run == 2
    assert reports["waiting"].cycles_run >= 1 and reports["waiting"].stop_reason.startswith("budget spent")
    assert any(
        "is being advanced by flow run" in line and "exits without touching" in line for line in lines.lines
    )
    started = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
    assert max(started.values()) == 1, "no candidate evaluated twice"
    ledger = evaluations(path)
    assert len(ledger) == 8 == len(started), "the budget is spent exactly, not exceeded"
    assert not _lock_held(path), "the lock is released"


def test_run_killed_mid_cycle_is_resumed_by_the_next(
    flow_campaign: Callable[..., Path], tmp_path: Path, prefect_server: str
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = flow_campaign(
        max_experiments=9,
        batch_size=3,
        initial_designs=3,
        oracle_extra=f'latency_s = 0.6\ncapacity = 1\njournal = "{journal}"',
    )
    script = f"from flows.campaign import campaign_flow; campaign_flow({str(path)!r})"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    kill_mid_experiment(process, journal, finished=4)
    assert _lock_held(path), "the killed run left its lease behind"

    returned_before = {e["candidate"] for e in read_journal(journal) if e["event"] == "finished"}
    in_flight = read_journal(journal)[-1]["candidate"]
    done_before = {e.candidate_id: e.values for e in evaluations(path) if e.status == "done"}
    assert set(done_before) == returned_before, "every result the lab returned is in the ledger"

    report = campaign_flow(str(path))

    assert report.stop_reason is not None and report.stop_reason.startswith("budget spent")
    started = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
    assert max(started.values()) == 1, "no candidate was sent to the lab twice"
    by_id = {e.candidate_id: e for e in evaluations(path)}
    assert len(by_id) == 9 and set(started) <= set(by_id)
    never_ran = set(by_id) - set(started)  # handed to the runner's queue when the run died
    assert all(by_id[c].status == "failed" and "interrupted" in (by_id[c].error or "") for c in never_ran)
    assert {cid: by_id[cid].values for cid in done_before} == done_before
    assert by_id[in_flight].status == "failed" and "interrupted" in (by_id[in_flight].error or "")
    assert all(e.status in ("done", "failed") for e in by_id.values())


@pytest.mark.parametrize("bad", [{"lease_s": 0}, {"wait_s": -1}])
def test_lock_refuses_bad_durations(tmp_path: Path, bad: dict[str, float]) -> None:
    from loop.lease import CampaignLease

    with Ledger(tmp_path / "l.db") as ledger, pytest.raises(ValueError, match="must be"):
        CampaignLease(ledger, "c", "me", **bad)


def test_cli_run_during_a_flow_run_exits_naming_the_flow_run(
    flow_campaign: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = flow_campaign(max_experiments=6, oracle_extra=f'latency_s = 3.0\njournal = "{journal}"')
    reports: list[CampaignReport] = []
    flow = threading.Thread(target=lambda: reports.append(campaign_flow(str(path))))
    flow.start()
    try:
        wait_for(lambda: journal.exists(), timeout_s=120)  # the flow holds the lease and evaluates
        cli = alloop("run", str(path), "--quiet", cwd=tmp_path)
        out, err = cli.communicate(timeout=120)
    finally:
        flow.join(timeout=300)
    assert cli.returncode == 2, err
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and "is being advanced by flow run" in lines[0], lines
    assert f"pid {os.getpid()}" in lines[0]
    assert reports[0].stop_reason is not None and reports[0].stop_reason.startswith("budget spent")
    by_status = Counter(e.status for e in evaluations(path))
    assert by_status == {"done": 6}, "the CLI run failed nothing of the flow's"
