"""One campaign, one writer: the lease in the ledger, taken by every ``alloop run``; on SQLite
and on PostgreSQL (``[sqlite]``, ``[postgresql]``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.lease import CampaignBusy, CampaignLease
from loop.ledger import Ledger
from loop.schema import leases
from oracles.simulated import read_journal
from tests.conftest import REPO
from tests.helpers import wait_for


def alloop(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """``alloop ARGS`` in a process of its own (the checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "loop.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_holder_is_refused_naming_the_first(ledger_location: Path | str) -> None:
    with Ledger(ledger_location) as ledger, CampaignLease(ledger, "c", "first writer"):
        with pytest.raises(CampaignBusy) as refused:
            CampaignLease(ledger, "c", "second writer").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert "is being advanced by first writer" in message and f"pid {os.getpid()}" in message
        assert " since " in message and "UTC" in message and "second writer" in message
        CampaignLease(ledger, "other campaign", "second writer").acquire()  # per campaign


def test_a_waiting_holder_takes_over_once_released(ledger_location: Path | str) -> None:
    with Ledger(ledger_location) as ledger:
        first = CampaignLease(ledger, "c", "first")
        first.acquire()
        waiting = CampaignLease(ledger, "c", "second", wait_s=30, poll_s=0.05)
        threading.Timer(0.3, first.release).start()
        with waiting, ledger.engine.connect() as conn:
            assert conn.execute(select(leases.c.label)).scalar() == "second"
        with ledger.engine.connect() as conn:
            assert conn.execute(select(leases)).first() is None, "released on exit"


def test_the_lease_of_a_dead_process_is_taken_over(ledger_location: Path | str) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    with Ledger(ledger_location) as ledger:
        stale = CampaignLease(ledger, "c", "crashed")
        stale.pid = int(dead.stdout)
        assert stale.try_acquire() is None
        with CampaignLease(ledger, "c", "next"), ledger.engine.connect() as conn:
            assert conn.execute(select(leases.c.label)).scalar() == "next"


def test_new_ledger_created_by_many_processes_at_once(ledger_location: Path | str) -> None:
    code = (
        "import sys; from loop.ledger import Ledger; from loop.lease import CampaignLease\n"
        "with Ledger(sys.argv[1]) as ledger: CampaignLease(ledger, 'c', 'p', wait_s=60, poll_s=0.01)"
        ".__enter__().release()"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(ledger_location)], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, errors


@pytest.mark.slow
def test_two_alloop_runs_of_one_campaign(
    branin_config: Callable[..., Path], tmp_path: Path, ledger_location: Path | str
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = branin_config(
        max_experiments=6, ledger=ledger_location, oracle_extra=f'latency_s = 2.0\njournal = "{journal}"'
    )
    first = alloop("run", str(path), "--quiet", cwd=tmp_path)
    try:
        wait_for(journal.exists, timeout_s=120)  # the first run holds the lease and evaluates
        second = alloop("run", str(path), "--quiet", cwd=tmp_path)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert "is being advanced by" in lines[0] and f"pid {first.pid}" in lines[0], lines[0]
        assert "alloop" in lines[0] and "run" in lines[0] and "since" in lines[0]
        assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    started = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
    assert len(started) == 6 and max(started.values()) == 1, "nothing evaluated twice"
    with Ledger(ledger_location) as ledger:
        campaign_id = ledger.campaign()["id"]
        evaluations = ledger.evaluations(campaign_id)
        assert len(evaluations) == 6 and all(e.status == "done" for e in evaluations)
        with ledger.engine.connect() as conn:
            assert conn.execute(select(leases)).first() is None
