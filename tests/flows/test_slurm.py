"""Oracle evaluations on a real Slurm cluster through dask-jobqueue, with workers lost mid-evaluation.

A local single-node Slurm (``tests/slurm``) runs Dask workers as batch jobs
(``dask_jobqueue.SLURMCluster``, adaptive). The emulated lab's journal says which process
started and finished each experiment; ``scontrol listpids`` says which processes belong to
which Slurm job.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dask
import pytest

from flows.campaign import campaign_flow
from loop.campaign import Campaign
from loop.config import load_config
from oracles.simulated import read_journal
from tests.flows.helpers import contents, evaluations
from tests.slurm.cluster import LocalSlurm
from tests.slurm.fixture import slurm

__all__ = ["slurm"]

pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed: pip install -e '.[slurm]'")
pytestmark = pytest.mark.slow


def slurm_execution(logs: Path, walltime: str = "00:05:00", per_task: int = 1, maximum: int = 2) -> str:
    """An ``[execution]`` section: adaptive Slurm workers of one core, no nanny."""
    return (
        'task_runner = "dask"\n'
        'cluster_class = "dask_jobqueue.SLURMCluster"\n'
        f'cluster_kwargs = {{ cores = 1, processes = 1, memory = "1GB", walltime = "{walltime}", '
        f'interface = "lo", nanny = false, log_directory = "{logs}" }}\n'
        f"adapt_kwargs = {{ minimum = 1, maximum = {maximum} }}\n"
        f"evaluations_per_task = {per_task}"
    )


class JobWatcher(threading.Thread):
    """Records which processes each running Slurm job owns; kills the Slurm worker running
    the first experiment the journal shows started and not finished, when ``kill`` is set."""

    def __init__(self, cluster: LocalSlurm, journal: Path, kill: bool) -> None:
        super().__init__(daemon=True)
        self.cluster, self.journal, self.kill = cluster, journal, kill
        self.pids: dict[int, str] = {}  # pid -> job id
        self.killed: tuple[str, int, str] | None = None  # (job id, pid, candidate id)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for job, state in self.cluster.jobs():
                if state == "RUNNING":
                    out = self.cluster.command("scontrol", "listpids", job, check=False)
                    for line in out.splitlines()[1:]:
                        self.pids.setdefault(int(line.split()[0]), job)
            if self.kill and self.killed is None and self.journal.is_file():
                finished = {e["candidate"] for e in read_journal(self.journal) if e["event"] == "finished"}
                for event in read_journal(self.journal):
                    job = self.pids.get(event["pid"])
                    if event["event"] == "started" and event["candidate"] not in finished and job:
                        # SIGKILL, as a lost node or the OOM killer would: with scancel,
                        # Dask's SIGTERM handler lets a short experiment finish first.
                        os.kill(event["pid"], signal.SIGKILL)
                        self.killed = (job, event["pid"], event["candidate"])
                        break
            time.sleep(0.2)


def _journal_counts(journal: Path, event: str) -> Counter[str]:
    return Counter(e["candidate"] for e in read_journal(journal) if e["event"] == event)


def test_a_worker_killed_mid_evaluation_is_retried_elsewhere_never_run_twice(
    slurm: LocalSlurm, flow_campaign: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    oracle = f'latency_s = 3.0\ncapacity = 2\njournal = "{journal}"'
    common = {"max_experiments": 8, "batch_size": 4, "initial_designs": 4, "acquisition": "random"}
    plain = flow_campaign(name="plain.toml", ledger="plain.db", oracle_extra=oracle, **common)
    on_slurm = flow_campaign(
        name="slurm.toml",
        ledger="slurm.db",
        oracle_extra=oracle,
        execution=slurm_execution(tmp_path / "logs", per_task=2),
        **common,
    )
    campaign = Campaign(load_config(plain))
    campaign.run()
    campaign.close()
    journal.unlink()

    watcher = JobWatcher(slurm, journal, kill=True)
    watcher.start()
    try:
        report = campaign_flow(str(on_slurm))
    finally:
        watcher.done.set()
        watcher.join()

    assert watcher.killed is not None, "a worker was killed mid-evaluation"
    _, killed_pid, killed_candidate = watcher.killed
    assert contents(on_slurm) == contents(plain), "same candidates, same values as in-process"
    assert report.experiments == 8 and all(e.status == "done" for e in evaluations(on_slurm))
    finished = _journal_counts(journal, "finished")
    assert set(finished.values()) == {1}, "every experiment finished exactly once"
    assert _journal_counts(journal, "started")[killed_candidate] == 2, "restarted on another worker"
    pids = {e["pid"] for e in read_journal(journal)}
    assert killed_pid in pids and pids <= set(watcher.pids), "every experiment ran inside a Slurm job"
    assert len({watcher.pids[p] for p in pids}) >= 2, "on at least two Slurm jobs"
    assert not (on_slurm.parent / ".alloop-outcomes").exists() or not any(
        (on_slurm.parent / ".alloop-outcomes").iterdir()
    ), "each batch's outcome store is removed once recorded"


def test_a_worker_killed_at_its_walltime_is_recorded_once_as_interrupted(
    slurm: LocalSlurm, flow_campaign: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = flow_campaign(
        max_experiments=4,
        batch_size=2,
        initial_designs=2,
        acquisition="random",
        oracle_extra=f'latency_s = 600.0\ncapacity = 2\njournal = "{journal}"',
        execution=slurm_execution(tmp_path / "logs", walltime="00:01:00", maximum=1),
    )
    start = time.monotonic()
    # Dask gives a task up once it was running on a lost worker this many times more than 0.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        report = campaign_flow(str(path), max_cycles=1)
    elapsed = time.monotonic() - start

    assert elapsed < 300, "Slurm killed the worker at its walltime, long before the 600 s experiments"
    rows = evaluations(path)
    assert [r.status for r in rows] == ["failed", "failed"]
    assert all(r.error is not None and r.error.startswith("EvaluationInterrupted: interrupted") for r in rows)
    assert report.cycles_run == 1, "the flow went on and closed its cycle"
    assert set(_journal_counts(journal, "started").values()) == {1}, "started once, not run again"
    assert not _journal_counts(journal, "finished")
