"""Oracles: what measures candidates (a simulated lab, a DFT code, a robot)."""

from oracles.base import Measurement, Oracle, Reattachable, Result
from oracles.errors import (
    EvaluationFailed,
    EvaluationTimeout,
    InvalidResult,
    OracleError,
    OracleSetupError,
)
from oracles.simulated import DatasetLab, EmulatedLab

__all__ = [
    "DatasetLab",
    "EmulatedLab",
    "EvaluationFailed",
    "EvaluationTimeout",
    "InvalidResult",
    "Measurement",
    "Oracle",
    "OracleError",
    "OracleSetupError",
    "Reattachable",
    "Result",
]
