"""Oracles: what measures candidates (a simulated lab, a DFT code, a robot).

``from oracles import Oracle`` works; names are imported on first use, so that a DFT job
process, which imports :mod:`oracles.dft_job` alone, does not pay for torch and pandas
(about 2 s a job when jobs are spawned).
"""

from __future__ import annotations

from loop.lazy import lazy_exports

_EXPORTS = {
    "Measurement": "oracles.base",
    "Oracle": "oracles.base",
    "Reattachable": "oracles.base",
    "Result": "oracles.base",
    "EvaluationFailed": "oracles.errors",
    "EvaluationTimeout": "oracles.errors",
    "InvalidResult": "oracles.errors",
    "OracleError": "oracles.errors",
    "OracleSetupError": "oracles.errors",
    "DatasetLab": "oracles.simulated",
    "EmulatedLab": "oracles.simulated",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
