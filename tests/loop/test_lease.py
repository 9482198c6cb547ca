"""One campaign, one writer: the lease in the ledger, taken by every ``alloop run``; on SQLite
and on PostgreSQL (``[sqlite]``, ``[postgresql]``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from loop.lease import CampaignBusy, CampaignLease
from loop.ledger import Ledger
from loop.schema import leases
from oracles.simulated import read_journal
from tests.conftest import REPO
from tests.helpers import wait_for


def alloop(*args: str, cwd: Path, stderr: IO[str] | int = subprocess.PIPE) -> subprocess.Popen[str]:
    """``alloop ARGS`` in a process of its own (the checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "loop.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
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
        with CampaignLease(ledger, "other campaign", "second writer"):  # per campaign
            pass  # released on exit: its renewing thread must not outlive the ledger


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


@pytest.mark.slow
def test_eight_writers_on_one_postgresql_ledger(
    branin_config: Callable[..., Path], tmp_path: Path, postgres_url: str
) -> None:
    """Six campaigns and two runs of a seventh, ``alloop run`` each, at once on one PostgreSQL
    ledger: every campaign ends with its budget evaluated once, and the shared campaign has one
    writer at a time (both runs wait for the test's lease, then one runs a cycle, then the other)."""
    configs, journals = [], []
    for i in range(7):
        journals.append(tmp_path / f"journal-{i}.jsonl")
        path = branin_config(
            f"c{i}.toml",
            ledger=postgres_url,
            acquisition="random",
            max_experiments=4,
            initial_designs=2,
            oracle_extra=f'latency_s = 0.5\njournal = "{journals[i]}"',
        )
        text = path.read_text().replace('name = "branin"', f'name = "c{i}"')
        path.write_text(text + "\n[execution]\nlock_wait_s = 600\n")
        configs.append(path)
    logs = [tmp_path / f"stderr-{n}.txt" for n in range(8)]
    with ExitStack() as stack:
        ledger = stack.enter_context(Ledger(postgres_url))
        held = stack.enter_context(CampaignLease(ledger, "c6", "the test"))
        # One cycle (a batch of 2) per run of the shared campaign c6, so that both runs evaluate.
        writers = [
            alloop(
                "run",
                str(configs[min(n, 6)]),
                "--quiet",
                *(["--max-cycles", "1"] if n >= 6 else []),
                cwd=tmp_path,
                stderr=stack.enter_context(log.open("w")),
            )
            for n, log in enumerate(logs)
        ]
        try:
            waiting = f"campaign c6 is being advanced by the test (pid {os.getpid()}"
            wait_for(lambda: all(waiting in log.read_text() for log in logs[6:]), timeout_s=600)
            held.release()
            outputs = [w.communicate(timeout=600)[0] for w in writers]
        finally:
            for w in writers:
                if w.poll() is None:
                    w.kill()
    assert [w.returncode for w in writers] == [0] * 8, [log.read_text()[-2000:] for log in logs]
    for journal in journals:
        started = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
        assert len(started) == 4 and max(started.values()) == 1, f"{journal.name}: nothing run twice"
    pids = [e["pid"] for e in read_journal(journals[6])]
    assert {pids[0], pids[-1]} == {writers[6].pid, writers[7].pid}, "c6: both runs evaluated"
    assert pids == [pids[0]] * 4 + [pids[-1]] * 4, "c6: one writer, then the other"
    assert all("0 cycle(s) run" not in out for out in outputs), outputs

    with Ledger(postgres_url) as ledger:
        assert sorted(ledger.campaign_names()) == [f"c{i}" for i in range(7)]
        for name in ledger.campaign_names():
            evaluations = ledger.evaluations(ledger.campaign(name)["id"])
            assert len(evaluations) == 4 and all(e.status == "done" and e.values for e in evaluations), name
            assert len({e.candidate_id for e in evaluations}) == 4, name
        with ledger.engine.connect() as conn:
            assert conn.execute(select(leases)).first() is None, "every lease given back"
