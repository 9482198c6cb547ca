"""A GP prior mean read from one input column: Δ-learning on a cheap model's prediction.

Where a cheap model already predicts the outcome (a universal potential's formation energy of
every candidate in a screening pool), the GP need not learn the outcome from scratch: with the
cheap prediction ``c(x)`` as one of its inputs, the prior mean ``a + b c(x)`` carries what the
cheap model knows and the kernel learns only where the expensive outcome departs from it. ``a``
and ``b`` are fitted with the kernel by marginal likelihood, so a cheap model that says nothing
gets ``b ≈ 0`` and the GP is the plain one. Because the mean is a module of the GP, everything
downstream sees it: posterior, Matheron paths (BoTorch's prior paths take the model's
``mean_module``) and :func:`surrogates.predict.exact_predict`.
"""

from __future__ import annotations

import torch
from gpytorch.means import Mean
from torch import Tensor


class ColumnMean(Mean):
    """``a + b x[..., column]``, on the GP's (normalised) inputs and standardised outcome.

    Args:
        column: The input column holding the cheap prediction.
        batch_shape: The GP's batch shape (one ``a``, ``b`` per batched output).
    """

    def __init__(self, column: int, batch_shape: torch.Size | None = None) -> None:
        super().__init__()
        if column < 0:
            raise ValueError(f"the prior-mean column must be >= 0, got {column}")
        self.column = column
        batch_shape = batch_shape or torch.Size()
        self.register_parameter("bias", torch.nn.Parameter(torch.zeros(*batch_shape, 1)))
        self.register_parameter("weight", torch.nn.Parameter(torch.zeros(*batch_shape, 1)))

    def forward(self, x: Tensor) -> Tensor:
        """``batch_shape x n x d`` inputs → ``batch_shape x n`` prior means."""
        return self.bias + self.weight * x[..., self.column]
