"""Oracle errors, split as ASE splits calculator errors.

* :class:`OracleSetupError` — the oracle cannot run at all (missing code, bad parameters,
  unreachable instrument). Never retried: retrying cannot help.
* :class:`EvaluationFailed` — one evaluation went wrong while running (SCF did not converge,
  a sample broke, a time-out). Retryable unless the error says otherwise;
  :class:`EvaluationInterrupted` (stopped from outside) always is.
"""

from __future__ import annotations

from loop.errors import AlloopError


class OracleError(AlloopError):
    """Base class of the errors an oracle raises."""

    retryable: bool = False


class OracleSetupError(OracleError, RuntimeError):
    """The oracle is not usable (like ASE's ``CalculatorSetupError``); never retried."""


class EvaluationFailed(OracleError, RuntimeError):
    """One evaluation failed while running (like ASE's ``CalculationFailed``).

    Args:
        message: What went wrong, for the ledger and the log.
        retryable: Whether trying the same candidate again may succeed.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class EvaluationTimeout(EvaluationFailed):
    """An evaluation exceeded its wall-time limit and was stopped by the oracle."""


class EvaluationInterrupted(EvaluationFailed):
    """Something outside the evaluation stopped it (a batch system at a worker's walltime, a
    lost worker or forkserver): the candidate is not at fault, so it may always run again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class InvalidResult(EvaluationFailed, ValueError):
    """An oracle returned a value that cannot be used (NaN, infinite, missing property)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
