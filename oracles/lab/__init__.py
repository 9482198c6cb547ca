"""The reference self-driving lab: the robot contract served over HTTP by the emulator.

``alloop lab serve`` (or ``python -m oracles.lab.cli serve``) runs it; tests and benchmarks
use :class:`LabServer` to run it in a background thread on a loopback port.
"""

from oracles.lab.server import PROGRAMS, Faults, Lab, LabServer, Program, ProgramParameter, create_app
from oracles.lab.store import LabStore, RunRecord

__all__ = [
    "PROGRAMS",
    "Faults",
    "Lab",
    "LabServer",
    "LabStore",
    "Program",
    "ProgramParameter",
    "RunRecord",
    "create_app",
]
