"""Turn a validated configuration into the objects a campaign runs with."""

from __future__ import annotations

from loop.acquisition import Acquisition
from loop.config import CampaignConfig, DatasetOracle, EmulatorOracle
from loop.pool import CandidatePool, read_table
from loop.space import SearchSpace
from oracles.base import Oracle
from oracles.functions import resolve_function
from oracles.simulated import DatasetLab, EmulatedLab
from surrogates.base import Surrogate
from surrogates.gp import GPSurrogate


def build_space(config: CampaignConfig) -> tuple[SearchSpace, CandidatePool | None]:
    """The search space, and the pool when the space is a finite table."""
    if config.space.pool is not None:
        pool = CandidatePool.from_csv(config.resolve(config.space.pool.path), config.space.pool.inputs)
        return pool.space, pool
    return config.space.build(), None


def build_oracle(config: CampaignConfig, space: SearchSpace) -> Oracle:
    """The oracle the configuration describes."""
    units = {o.name: o.unit for o in config.objectives}
    spec = config.oracle
    if isinstance(spec, EmulatorOracle):
        return EmulatedLab(
            resolve_function(spec.function),
            properties=units | spec.properties,
            noise_sd=spec.noise_sd,
            latency_s=spec.latency_s,
            failure_probability=spec.failure_probability,
            invalid_probability=spec.invalid_probability,
            cost_per_experiment=spec.cost_per_experiment,
            capacity=spec.capacity,
            seed=config.campaign.seed,
            journal=None if spec.journal is None else config.resolve(spec.journal),
        )
    assert isinstance(spec, DatasetOracle)
    return DatasetLab(
        read_table(config.resolve(spec.path)),
        space,
        outputs=units,
        mode=spec.mode,
        noise_sd=spec.noise_sd,
        seed=config.campaign.seed,
    )


def build_surrogate(config: CampaignConfig, space: SearchSpace) -> Surrogate:
    """The surrogate, with inputs scaled by the space's bounds."""
    section = config.surrogate
    return GPSurrogate(
        input_bounds=space.bounds,
        kernel=section.kernel,
        lengthscale_prior=section.lengthscale_prior,
        noise=section.noise,
        warm_start=section.warm_start,
    )


def build_acquisition(config: CampaignConfig) -> Acquisition:
    """The acquisition strategy; objectives become signed weights."""
    section = config.acquisition
    weights = [o.weight if o.direction == "maximize" else -o.weight for o in config.objectives]
    return Acquisition(
        section.type,
        weights,
        beta=section.beta,
        mc_samples=section.mc_samples,
        chunk_size=section.chunk_size,
        num_restarts=section.num_restarts,
        raw_samples=section.raw_samples,
        max_iterations=section.max_iterations,
    )
