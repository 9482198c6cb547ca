"""Helpers shared by the crash tests: wait for a condition, kill a run mid-experiment."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from oracles.simulated import read_journal


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``condition`` until it holds; raise ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def kill_mid_experiment(
    process: subprocess.Popen[bytes], journal: Path, finished: int, timeout_s: float = 180
) -> None:
    """SIGKILL ``process`` while the emulated lab is busy, after ``finished`` experiments.

    Waits until the lab's journal shows at least ``finished`` finished experiments and a new
    one started, then 0.2 s more so the lab is mid-experiment: its result has not come back.
    """

    def busy_after_enough() -> bool:
        events = read_journal(journal) if journal.exists() else []
        return sum(e["event"] == "finished" for e in events) >= finished and events[-1]["event"] == "started"

    try:
        wait_for(busy_after_enough, timeout_s)
        time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
