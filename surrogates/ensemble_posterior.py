"""An ensemble posterior that any BoTorch sampler can draw from.

BoTorch's ``EnsemblePosterior`` samples members through an ``IndexSampler``; a quasi-Monte Carlo
normal sampler (which the loop's MC acquisitions use, whatever the model) asks for normal base
samples it does not offer. :class:`MemberPosterior` accepts both: a normal base sample ``z``
picks the member whose cumulative weight first exceeds ``Φ(z)``, so Sobol normal draws become
stratified member draws, the same for every candidate of a sample (common random numbers).
"""

from __future__ import annotations

import torch
from botorch.posteriors.ensemble import EnsemblePosterior
from torch import Tensor


class MemberPosterior(EnsemblePosterior):
    """``EnsemblePosterior`` of ``b x s x q x m`` values that also takes normal base samples."""

    @property
    def base_sample_shape(self) -> torch.Size:
        """One base sample per t-batch: it chooses the member."""
        return self.batch_shape

    @property
    def batch_range(self) -> tuple[int, int]:
        return 0, len(self.batch_shape)

    def rsample_from_base_samples(self, sample_shape: torch.Size, base_samples: Tensor) -> Tensor:
        """Samples ``sample_shape x b x q x m`` from member indices (an ``IndexSampler``'s)
        or from standard normal base samples of shape ``sample_shape x b``."""
        if base_samples.is_floating_point():
            uniform = torch.special.ndtr(base_samples)
            weights = self.mixture_weights.reshape(-1, self.ensemble_size)[0]  # the same in every batch
            edges = (weights / weights.sum()).cumsum(-1).to(uniform)
            base_samples = torch.searchsorted(edges, uniform.contiguous()).clamp_max(self.ensemble_size - 1)
        return super().rsample_from_base_samples(sample_shape, base_samples)
