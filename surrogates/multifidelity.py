"""A GP across fidelities: BoTorch's ``SingleTaskMultiFidelityGP``.

The last input column is the fidelity, in ``[0, 1]`` (1: the target fidelity). Its kernel is
BoTorch's ``LinearTruncatedFidelityKernel``: a Matern-5/2 over the design inputs, plus a term
whose weight grows as the fidelity falls, so measurements at a cheap fidelity inform the
target fidelity, less the further they are from it. Everything else (input scaling with fixed
bounds, standardised outcomes, warm starts, the chunked exact predictions) is
:class:`~surrogates.gp.GPSurrogate`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.models import SingleTaskGP, SingleTaskMultiFidelityGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from torch import Tensor

from surrogates.gp import GPSurrogate


class MultiFidelityGP(GPSurrogate):
    """An exact multi-fidelity GP whose last input is the fidelity.

    Args:
        input_bounds: ``2 x d`` bounds of the design inputs (without the fidelity column);
            ``None`` uses the training data's range.
        warm_start: Start each fit from the previous fit's hyper-parameters.
        max_iterations: L-BFGS iterations per fit.
    """

    def __init__(
        self, input_bounds: Tensor | None = None, warm_start: bool = True, max_iterations: int = 100
    ) -> None:
        super().__init__(input_bounds, warm_start=warm_start, max_iterations=max_iterations)

    def _model(self, X: Tensor, Y: Tensor, Yvar: Tensor | None) -> SingleTaskGP:
        d = X.shape[-1]
        bounds = None
        if self.input_bounds is not None:
            unit = torch.tensor([[0.0], [1.0]], dtype=self.input_bounds.dtype)
            bounds = torch.cat([self.input_bounds, unit], dim=-1)
        return SingleTaskMultiFidelityGP(
            X,
            Y,
            train_Yvar=Yvar,
            data_fidelities=[d - 1],
            input_transform=Normalize(d, bounds=bounds),
            outcome_transform=Standardize(Y.shape[-1]),
        )

    def summary(self) -> dict[str, Any]:
        model = self.fitted
        return {
            "type": "MultiFidelityGP",
            "n_train": int(model.train_inputs[0].shape[-2]),
            "noise_variance": model.likelihood.noise.detach().squeeze().tolist(),
        }
