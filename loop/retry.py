"""How an evaluation that failed with a retryable oracle error is tried again.

One policy for both runners of a campaign: the engine-free loop (``[oracle] retries``, see
:meth:`loop.campaign.Campaign.record_all`) and the Prefect flow (``[execution] retries``). Only
a retryable :class:`~oracles.errors.EvaluationFailed` is retried; setup errors, invalid results
and other exceptions never are, and the ledger records one evaluation whatever the attempts.
"""

from __future__ import annotations

from dataclasses import dataclass

from oracles.errors import EvaluationFailed


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after a retryable failure.

    Args:
        retries: Attempts after the first (0: never retry).
        delay_s: Seconds before the first retry.
        backoff: Factor of the delay from one retry to the next.
    """

    retries: int = 0
    delay_s: float = 0.0
    backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.delay_s < 0 or self.backoff < 1:
            raise ValueError(
                f"retries and delay_s must be >= 0 and backoff >= 1; got {self.retries}, "
                f"{self.delay_s}, {self.backoff}"
            )

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1 for the first) that raised ``error`` is
        tried again."""
        return isinstance(error, EvaluationFailed) and error.retryable and attempt <= self.retries

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` before the next."""
        return self.delay_s * self.backoff ** (attempt - 1)
