"""Learned feasibility: the acquisition weighted by P(success), with a floor.

Evaluations that failed for good (``failed`` and not retryable: the synthesis failed, the SCF
never converged, the robot refused) and the ``done`` ones train a
:class:`~surrogates.feasibility.FeasibilityClassifier`; a candidate's log-acquisition value
is then raised by ``log max(P(success), floor)`` per batch member. The floor keeps uncertain
regions within reach, so one early failure does not wall off a region for good.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from botorch.acquisition import AcquisitionFunction
from torch import Tensor

from loop.ledger import EvaluationRecord
from surrogates.feasibility import FeasibilityClassifier


def is_wasted(evaluation: EvaluationRecord) -> bool:
    """A failure that will not go away on retry: an evaluation spent for nothing."""
    return evaluation.status == "failed" and evaluation.retryable is False


def feasibility_data(
    evaluations: Sequence[EvaluationRecord],
) -> tuple[list[EvaluationRecord], Tensor]:
    """The evaluations that teach feasibility (done or failed for good) and their ``n``
    labels (1 = success)."""
    taught = [e for e in evaluations if e.status == "done" or is_wasted(e)]
    return taught, torch.tensor([float(e.status == "done") for e in taught], dtype=torch.double)


class FeasibilityWeighted(AcquisitionFunction):
    """``acqf(X) + Σ_q log max(P(success | x_q), floor)`` for a log-valued acquisition.

    Args:
        acqf: A log-acquisition (qLogNEI, qLogEI, qLogNEHVI, qLogNParEGO).
        classifier: The fitted classifier.
        floor: The least weight of a candidate, in ``(0, 1]``.
    """

    def __init__(self, acqf: AcquisitionFunction, classifier: FeasibilityClassifier, floor: float) -> None:
        super().__init__(model=acqf.model)
        self.acqf = acqf
        self.classifier = classifier
        self.log_floor = math.log(floor)
        # botorch annotates X_pending as a Tensor, though its own set_X_pending stores None
        self.X_pending = getattr(acqf, "X_pending", None)  # type: ignore[assignment]

    def forward(self, X: Tensor) -> Tensor:
        """``b x q x d`` → ``b`` values."""
        weight = self.classifier.log_probability(X).clamp_min(self.log_floor).sum(dim=-1)
        return self.acqf(X) + weight

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        self.acqf.set_X_pending(X_pending)
        self.X_pending = X_pending  # type: ignore[assignment]
