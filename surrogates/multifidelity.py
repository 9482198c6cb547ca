"""A GP across fidelities: BoTorch's ``SingleTaskMultiFidelityGP``.

The last input column is the fidelity, in ``[0, 1]`` (1: the target fidelity). Its kernel is
BoTorch's ``LinearTruncatedFidelityKernel``: a Matern-5/2 over the design inputs, plus a term
whose weight grows as the fidelity falls, so measurements at a cheap fidelity inform the
target fidelity, less the further they are from it. Everything else (input scaling with fixed
bounds, standardised outcomes, warm starts, the chunked exact predictions) is
:class:`~surrogates.gp.GPSurrogate`'s.

Whole posterior functions (:meth:`MultiFidelityGP.sample_paths`, what Thompson sampling over
a pool of 10^4 candidates needs) come from Matheron's rule, as for the single-fidelity GP;
BoTorch has no random features for the fidelity kernel, so :class:`FidelityFeatures` supplies
them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.models import SingleTaskGP, SingleTaskMultiFidelityGP
from botorch.models.kernels import LinearTruncatedFidelityKernel
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.sampling.pathwise import draw_kernel_feature_paths, gen_kernel_features
from botorch.sampling.pathwise.features.maps import FeatureMap
from botorch.sampling.pathwise.prior_samplers import TPathwisePriorSampler
from botorch.sampling.pathwise.utils import OutputscaleTransform
from gpytorch.kernels import Kernel, ProductKernel, ScaleKernel
from torch import Tensor

from surrogates.gp import GPSurrogate

_JITTER = 1e-9


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

    def prior_sampler(self) -> TPathwisePriorSampler:
        """Random features of the fidelity kernel, exact at the fidelities of the training data."""
        (train_X,) = self.fitted.train_inputs  # transformed: the fidelity column is as given
        levels = torch.unique(train_X[..., -1].clamp(0, 1))
        generator = functools.partial(fidelity_features, levels=levels[levels < 1])
        return functools.partial(draw_kernel_feature_paths, map_generator=generator)

    def summary(self) -> dict[str, Any]:
        model = self.fitted
        return {
            "type": "MultiFidelityGP",
            "n_train": int(model.train_inputs[0].shape[-2]),
            "noise_variance": model.likelihood.noise.detach().squeeze().tolist(),
        }


class FidelityFeatures(FeatureMap):
    """Random features of ``LinearTruncatedFidelityKernel`` (one fidelity column):
    ``φ(x, s) · φ(x', s') ≈ k_0(x, x') + c(s, s') k_1(x, x')``, with
    ``c(s, s') = (1 - s)(1 - s')(1 + s s')^p``.

    ``φ = [φ_0(x), ψ(s) ⊗ φ_1(x)]``: Fourier features ``φ_0``, ``φ_1`` of the two Matern
    kernels (BoTorch's), and ``ψ(s) = L⁻¹ c(S, s)`` with ``L Lᵀ = c(S, S)`` over the fidelity
    ``levels`` ``S`` below 1, so ``ψ(s) · ψ(s') = c(s, s')`` exactly at those levels and at the
    target (where ``c = 0``), and a Nyström approximation between them.

    Args:
        kernel: The fitted fidelity kernel.
        num_inputs: Model inputs, the fidelity column included.
        num_outputs: Fourier features of each Matern kernel.
        levels: ``r`` fidelity values below 1 (those of the training data).
    """

    def __init__(
        self, kernel: LinearTruncatedFidelityKernel, num_inputs: int, num_outputs: int, levels: Tensor
    ) -> None:
        super().__init__()
        if len(kernel.fidelity_dims) != 1:
            raise UnsupportedError("random features of a fidelity kernel need exactly one fidelity column")
        self.kernel, self.fidelity = kernel, int(kernel.fidelity_dims[0])
        self.design = [i for i in range(num_inputs) if i != self.fidelity]
        width = len(self.design)
        self.unbiased = gen_kernel_features(
            kernel.covar_module_unbiased, num_inputs=width, num_outputs=num_outputs
        )
        self.biased = gen_kernel_features(
            kernel.covar_module_biased, num_inputs=width, num_outputs=num_outputs
        )
        self.levels = levels.detach().to(kernel.power)
        eye = torch.eye(len(self.levels), dtype=self.levels.dtype)
        self.num_outputs = (1 + len(self.levels)) * self.unbiased.num_outputs
        self.batch_shape = kernel.batch_shape
        self.root = torch.linalg.cholesky(
            self._bias(self.levels[:, None], self.levels[None, :]) + _JITTER * eye
        )
        self.input_transform = self.output_transform = None

    def _bias(self, s: Tensor, t: Tensor) -> Tensor:
        s, t = s.clamp(0, 1), t.clamp(0, 1)
        return (1 - s) * (1 - t) * (1 + s * t).pow(self.kernel.power.detach().reshape(()))

    def forward(self, x: Tensor) -> Tensor:
        """``... x num_inputs`` → ``... x (1 + r) num_outputs`` features."""
        design = x[..., self.design]
        phi0, phi1 = self.unbiased(design), self.biased(design)
        cross = self._bias(x[..., self.fidelity, None], self.levels)  # ... x r
        psi = torch.linalg.solve_triangular(self.root, cross.unsqueeze(-1), upper=False).squeeze(-1)
        return torch.cat([phi0, (psi.unsqueeze(-1) * phi1.unsqueeze(-2)).flatten(-2)], dim=-1)


def fidelity_features(kernel: Kernel, *, num_inputs: int, num_outputs: int, levels: Tensor) -> FeatureMap:
    """The feature map of ``SingleTaskMultiFidelityGP``'s kernel (a ``ScaleKernel`` over a
    one-factor ``ProductKernel`` over the fidelity kernel); other kernels as BoTorch has them."""
    base = kernel.base_kernel if isinstance(kernel, ScaleKernel) else kernel
    if isinstance(base, ProductKernel) and len(base.kernels) == 1:
        base = base.kernels[0]
    if not isinstance(base, LinearTruncatedFidelityKernel):
        return gen_kernel_features(kernel, num_inputs=num_inputs, num_outputs=num_outputs)
    features = FidelityFeatures(base, num_inputs, num_outputs, levels)
    if isinstance(kernel, ScaleKernel):
        features.output_transform = OutputscaleTransform(kernel)
    return features
