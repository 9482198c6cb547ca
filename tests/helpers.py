"""Helpers shared by the tests: wait for a condition, kill a run mid-experiment, write a
two-fidelity campaign (an emulated screen and a lab, emulated or over HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


LAB_TOKEN = "mf-test-token-5b1d9e"
"""The reference lab's bearer token in the tests (``reference_lab``)."""

FIDELITY_CAMPAIGN = """
[campaign]
name = "mf"
seed = 1
ledger = "ledger.db"

[space.pool]
path = "pool.csv"
inputs = ["x1", "x2"]

[[objectives]]
name = "y"
direction = "minimize"

[acquisition]
type = "{kind}"
batch_size = {batch_size}
initial_designs = 4

[[oracles]]
fidelity = "screen"
cost = 0.25
type = "emulator"
function = "branin_screen"
noise_sd = 1.0
{screen_extra}

[[oracles]]
fidelity = "lab"
cost = 1.0
{lab}

[stopping]
max_cost = {max_cost}
{extra}
"""

EMULATED_LAB = 'type = "emulator"\nfunction = "branin"'
"""The ``lab`` fidelity's oracle lines: Branin, emulated."""


def robot_entry(url: str) -> str:
    """The ``lab`` fidelity's oracle lines: the reference lab at ``url``, over HTTP."""
    return f'type = "robot"\nurl = "{url}"\nprogram = "branin"\npoll_interval_s = 0.05'


def write_fidelity_campaign(folder: Path, kind: str = "mf_ucb", **fields: Any) -> Path:
    """A campaign ``mf`` over a 30-design pool, measured at a cheap, biased, noisy ``screen``
    (cost 0.25) and the ``lab`` (cost 1); keyword arguments fill the file's blanks
    (``screen_extra``, ``lab``: oracle lines; ``extra``: sections after ``[stopping]``)."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"x1": rng.uniform(-5, 10, 30), "x2": rng.uniform(0, 15, 30)}).to_csv(
        folder / "pool.csv", index=False
    )
    values: dict[str, Any] = {
        "kind": kind,
        "batch_size": 2,
        "max_cost": 6,
        "screen_extra": "",
        "lab": EMULATED_LAB,
        "extra": "",
    }
    values.update(fields)
    path = folder / "campaign.toml"
    path.write_text(textwrap.dedent(FIDELITY_CAMPAIGN.format(**values)))
    return path
