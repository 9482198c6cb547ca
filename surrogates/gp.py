"""Gaussian-process surrogate: BoTorch's ``SingleTaskGP`` with an ARD Matern-5/2 kernel.

Inputs are normalised to the unit cube with the *space's* bounds (fixed once, so a pool is
scaled once over all its candidates), outcomes are standardised, and hyper-parameters are
fitted by ``fit_gpytorch_mll``. Several outcomes give a batched multi-output GP. Observed
noise (replicate variance, an instrument's stated uncertainty) may be passed as ``Yvar``.
Outcomes that span orders of magnitude may be modelled as logarithms (``log_outcomes``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms.input import Normalize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from botorch.posteriors import Posterior
from botorch.sampling.pathwise import draw_kernel_feature_paths, draw_matheron_paths
from botorch.sampling.pathwise.prior_samplers import TPathwisePriorSampler
from botorch.utils.datasets import SupervisedDataset
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.models import ExactGP
from torch import Tensor

from surrogates.base import DEFAULT_CHUNK_SIZE, Surrogate, SurrogateError
from surrogates.log_outcomes import outcome_transform
from surrogates.predict import exact_predict
from surrogates.prior_mean import ColumnMean

Kernel = Literal["matern52", "rbf"]
#: Observations from which a warm-started fit is capped at ``warm_max_iterations``.
LARGE_FIT = 500
NoiseModel = Literal["inferred", "observed"]
#: The exact GPs that :meth:`GPSurrogate._fit_hyperparameters` fits (single- or multi-task).
GP = TypeVar("GP", bound=ExactGP)


class SamplesPaths:
    """Mixin for surrogates that can draw whole functions from their posterior."""

    def sample_paths(self, num_samples: int) -> Callable[[Tensor], Tensor]:
        """``num_samples`` posterior function draws: ``N x d`` → ``num_samples x N x m``."""
        raise NotImplementedError


class GPSurrogate(Surrogate, SamplesPaths):
    """An exact GP, refitted on every call of :meth:`fit`.

    Args:
        input_bounds: ``2 x d`` bounds that map inputs to the unit cube (the space's bounds);
            ``None`` uses the training data's range.
        kernel: ``"matern52"`` (ARD Matern-5/2) or ``"rbf"`` (ARD squared exponential).
        lengthscale_prior: ``True`` for BoTorch's dimension-scaled log-normal prior on the
            length-scales; ``False`` for none (a scaled kernel, maximum likelihood).
        noise: ``"inferred"`` fits one homoscedastic noise level; ``"observed"`` uses the
            dataset's ``Yvar`` (replicate variance, instrument uncertainty).
        warm_start: Start each fit from the previous fit's hyper-parameters.
        max_iterations: L-BFGS iterations per fit: a cold fit on ~10^3 points with ~60
            inputs runs minutes to full convergence and gains little past ~100 iterations.
        warm_max_iterations: The cap of a warm-started fit on at least
            :data:`LARGE_FIT` observations. There an iteration costs a Cholesky and its
            backward pass (~0.15 s at 10^3 points) and the previous round's hyper-parameters
            are already near the optimum: on a 10^3-structure pool, 20 warm iterations reach
            the marginal likelihood of 100 within 0.3% and the same prediction error, 5x faster.
        prior_mean_column: An input column holding a cheap model's prediction of the outcome
            (e.g. a universal potential's formation energy): the prior mean becomes
            ``a + b x[column]`` (:class:`~surrogates.prior_mean.ColumnMean`), so the kernel
            learns the correction to it (Δ-learning). ``None``: a constant mean.
        log_outcomes: Outcomes (indices into the ``m`` outcomes) modelled as logarithms: a
            positive quantity spanning orders of magnitude (conductivity, a rate). The
            posterior is log-normal in them (:mod:`surrogates.log_outcomes`); their values must
            be > 0. Not with ``noise = "observed"``.
    """

    def __init__(
        self,
        input_bounds: Tensor | None = None,
        kernel: Kernel = "matern52",
        lengthscale_prior: bool = True,
        noise: NoiseModel = "inferred",
        warm_start: bool = True,
        max_iterations: int = 100,
        warm_max_iterations: int = 20,
        prior_mean_column: int | None = None,
        log_outcomes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if kernel not in ("matern52", "rbf"):
            raise ValueError(f"kernel must be 'matern52' or 'rbf', got {kernel!r}")
        if noise not in ("inferred", "observed"):
            raise ValueError(f"noise must be 'inferred' or 'observed', got {noise!r}")
        self.input_bounds = input_bounds
        self.kernel, self.lengthscale_prior = kernel, lengthscale_prior
        for name, value in (("max_iterations", max_iterations), ("warm_max_iterations", warm_max_iterations)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.noise, self.warm_start = noise, warm_start
        self.max_iterations, self.warm_max_iterations = max_iterations, warm_max_iterations
        if prior_mean_column is not None and prior_mean_column < 0:
            raise ValueError(f"prior_mean_column must be >= 0, got {prior_mean_column}")
        self.prior_mean_column = prior_mean_column
        if any(i < 0 for i in log_outcomes):
            raise ValueError(f"log_outcomes must be >= 0, got {list(log_outcomes)}")
        if log_outcomes and noise == "observed":
            raise ValueError("log_outcomes cannot be used with noise = 'observed' (variances on a log scale)")
        self.log_outcomes = sorted(set(log_outcomes))
        self.model: SingleTaskGP | None = None

    # --- fitting ----------------------------------------------------------------------------

    def fit(self, dataset: SupervisedDataset) -> GPSurrogate:
        X, Y, Yvar = dataset.X.double(), dataset.Y.double(), dataset.Yvar
        if X.shape[0] == 0:
            raise SurrogateError("cannot fit a GP to an empty dataset")
        if self.prior_mean_column is not None and self.prior_mean_column >= X.shape[-1]:
            raise SurrogateError(
                f"prior_mean_column {self.prior_mean_column} is past the inputs' {X.shape[-1]} columns"
            )
        for name, tensor in (("X", X), ("Y", Y), ("Yvar", Yvar)):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise SurrogateError(f"training {name} contains NaN or infinite values")
        self._check_logged(dataset)
        if self.noise == "observed":
            if Yvar is None:
                raise SurrogateError("noise = 'observed' needs Yvar in the dataset")
            Yvar = Yvar.double().clamp_min(1e-9)
        model = self._model(X, Y, Yvar if self.noise == "observed" else None)
        previous = self.model
        self.model = self._fit_hyperparameters(
            model, previous if previous is not None and previous.num_outputs == Y.shape[-1] else None
        )
        return self

    def _check_logged(self, dataset: SupervisedDataset) -> None:
        """Every logged outcome exists and is positive in ``dataset``."""
        m = dataset.Y.shape[-1]
        for i in self.log_outcomes:
            if i >= m:
                raise SurrogateError(f"log_outcomes {i} is past the dataset's {m} outcomes")
            column = dataset.Y[..., i]
            if (column <= 0).any():
                raise SurrogateError(
                    f"outcome {dataset.outcome_names[i]!r} is modelled on a log scale and must be > 0; "
                    f"the data hold {float(column.min()):g}"
                )

    def _fit_hyperparameters(self, model: GP, previous: GP | None) -> GP:
        """Fit ``model``'s hyper-parameters by marginal likelihood and return it in eval mode.

        With :attr:`warm_start`, the fit starts from the kernel (and learnt noise) of
        ``previous``, a fitted GP of the same structure on the last round's data, and on
        :data:`LARGE_FIT` observations or more stops at :attr:`warm_max_iterations`.
        """
        iterations = self.max_iterations
        if self.warm_start and previous is not None:
            model.covar_module.load_state_dict(previous.covar_module.state_dict())
            if self.prior_mean_column is not None:
                model.mean_module.load_state_dict(previous.mean_module.state_dict())
            if self.noise == "inferred":
                model.likelihood.load_state_dict(previous.likelihood.state_dict())
            if model.train_inputs[0].shape[-2] >= LARGE_FIT:
                iterations = min(iterations, self.warm_max_iterations)
        fit_gpytorch_mll(
            ExactMarginalLogLikelihood(model.likelihood, model),
            optimizer_kwargs={"options": {"maxiter": iterations}},
        )
        model.eval()
        return model

    def _model(self, X: Tensor, Y: Tensor, Yvar: Tensor | None) -> SingleTaskGP:
        """The GP to fit: ``n x d`` inputs, ``n x m`` outcomes, optional observed variances."""
        d, m = X.shape[-1], Y.shape[-1]
        batch_shape = torch.Size([m]) if m > 1 else torch.Size()
        model = SingleTaskGP(
            X,
            Y,
            train_Yvar=Yvar,
            covar_module=self._covar_module(d, batch_shape),
            mean_module=None
            if self.prior_mean_column is None
            else ColumnMean(self.prior_mean_column, batch_shape),
            input_transform=Normalize(d, bounds=self.input_bounds),
            outcome_transform=outcome_transform(m, self.log_outcomes),
        )
        # BoTorch subsets its default modules only; every parameter here is batched over the
        # ``m`` outcomes in its leading dimension (none is batched where m = 1).
        batched = m > 1
        model._subset_batch_dict = {
            name: -p.dim() for name, p in model.named_parameters() if batched and p.shape[:1] == batch_shape
        }
        return model

    def _covar_module(self, d: int, batch_shape: torch.Size) -> torch.nn.Module:
        covar: torch.nn.Module  # gpytorch's constructors are untyped
        if self.lengthscale_prior:
            covar = get_covar_module_with_dim_scaled_prior(
                ard_num_dims=d, batch_shape=batch_shape, use_rbf_kernel=self.kernel == "rbf"
            )
        else:
            base = (
                RBFKernel(ard_num_dims=d, batch_shape=batch_shape)
                if self.kernel == "rbf"
                else MaternKernel(nu=2.5, ard_num_dims=d, batch_shape=batch_shape)
            )
            covar = ScaleKernel(base, batch_shape=batch_shape)
        return covar

    # --- the BoTorch Model interface, delegated to the fitted GP ---------------------------

    @property
    def fitted(self) -> SingleTaskGP:
        if self.model is None:
            raise SurrogateError("the GP surrogate has not been fitted yet; call fit(dataset)")
        return self.model

    @property
    def num_outputs(self) -> int:
        return self.fitted.num_outputs

    @property
    def batch_shape(self) -> torch.Size:
        return self.fitted.batch_shape

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> Posterior:
        return self.fitted.posterior(X, *args, **kwargs)

    def condition_on_observations(self, X: Tensor, Y: Tensor, **kwargs: Any) -> Model:
        return self.fitted.condition_on_observations(X, Y, **kwargs)

    def subset_output(self, idcs: list[int]) -> Model:
        return self.fitted.subset_output(idcs)

    @torch.no_grad()
    def predict(self, X: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
        # One Cholesky of the training covariance, then one cross-covariance and one matrix
        # product per chunk: the exact marginals, without the joint posterior's overhead.
        return exact_predict(self.fitted, X, chunk_size)

    def sample_paths(self, num_samples: int) -> Callable[[Tensor], Tensor]:
        # Matheron paths apply the model's input and outcome transforms themselves.
        paths = draw_matheron_paths(
            self.fitted, sample_shape=torch.Size([num_samples]), prior_sampler=self.prior_sampler()
        )
        single_output = self.fitted.num_outputs == 1

        @torch.no_grad()
        def evaluate(X: Tensor) -> Tensor:
            values = paths(X)
            return values.unsqueeze(-1) if single_output else values.transpose(-1, -2)

        return evaluate

    def prior_sampler(self) -> TPathwisePriorSampler:
        """How :meth:`sample_paths` draws prior functions: random Fourier features of the
        kernel (BoTorch's, for the Matern and RBF kernels here)."""
        return draw_kernel_feature_paths

    def summary(self) -> dict[str, Any]:
        model = self.fitted
        scaled = isinstance(model.covar_module, ScaleKernel)
        base = model.covar_module.base_kernel if scaled else model.covar_module
        summary: dict[str, Any] = {
            "type": "GPSurrogate",
            "kernel": self.kernel,
            "n_train": int(model.train_inputs[0].shape[-2]),
            "lengthscales": base.lengthscale.detach().squeeze().tolist(),
            "noise": self.noise,
        }
        if self.log_outcomes:
            summary["log_outcomes"] = list(self.log_outcomes)
        if isinstance(model.mean_module, ColumnMean):
            summary["prior_mean"] = {
                "column": model.mean_module.column,
                "bias": model.mean_module.bias.detach().squeeze().tolist(),
                "weight": model.mean_module.weight.detach().squeeze().tolist(),
            }
        if scaled:
            summary["outputscale"] = model.covar_module.outputscale.detach().tolist()
        if self.noise == "inferred":
            summary["noise_variance"] = model.likelihood.noise.detach().squeeze().tolist()
        return summary
