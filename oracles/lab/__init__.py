"""The reference self-driving lab: the robot contract served over HTTP by the emulator.

``alloop lab serve`` (or ``python -m oracles.lab.cli serve``) runs it; tests and benchmarks
use :class:`LabServer` to run it in a background thread on a loopback port. Names are
imported on first use, so that the robot oracle can import :mod:`oracles.lab.contract`
without FastAPI.
"""

from __future__ import annotations

from loop.lazy import lazy_exports

_EXPORTS = {
    "create_app": "oracles.lab.app",
    "Faults": "oracles.lab.instruments",
    "Lab": "oracles.lab.instruments",
    "PROGRAMS": "oracles.lab.programs",
    "Program": "oracles.lab.programs",
    "ProgramParameter": "oracles.lab.programs",
    "LabServer": "oracles.lab.server",
    "LabStore": "oracles.lab.store",
    "RunRecord": "oracles.lab.store",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
