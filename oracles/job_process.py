"""How a DFT job's child process ended: killed on purpose, or from outside.

The runner (:class:`oracles.dft.DFTRunner`) kills a job past its wall time with every process it
started; a job that something else ended (a batch system's SIGTERM at a worker's walltime, a lost
forkserver) was interrupted, which says nothing about the candidate, so it may run again.
"""

from __future__ import annotations

import os
import signal
from typing import Any

#: Signals by which something outside a job ends it (a batch system at the walltime, a shutdown,
#: an operator), unlike a crash of the calculation itself (SIGSEGV, SIGABRT).
_OUTSIDE_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})


def killed_from_outside(exitcode: int | None, start_method: str) -> str | None:
    """How a job process that wrote no result was ended from outside, or ``None``."""
    if exitcode is not None and exitcode < 0 and -exitcode in _OUTSIDE_SIGNALS:
        return f"was killed by {signal.Signals(-exitcode).name}"
    if exitcode == 255 and start_method == "forkserver":  # multiprocessing's code for it
        return "lost its forkserver process (killed from outside)"
    return None


def kill_group(process: Any) -> None:
    """Kill a job process and every process it started (its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.join(5)
