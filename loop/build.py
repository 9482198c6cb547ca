"""Turn a validated configuration into the objects a campaign runs with.

The pre-flight checks (:mod:`loop.preflight`) run here, as each part is built, so that a
campaign whose parts cannot work together fails before its ledger is opened.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any, cast

import torch

from loop.acquisition import Acquisition, Kind
from loop.config import CampaignConfig
from loop.config_oracles import DatasetOracle, EmulatorOracle, OracleSection
from loop.errors import ConfigError
from loop.featurize import StructureFeaturizer
from loop.fidelity import FIDELITY_KINDS
from loop.hull_acquisition import HULL_AWARE, HullTarget
from loop.plugins import ORACLE_PLUGINS, POOL_PLUGINS, PluginContext, PluginSection, plugin
from loop.pool import CandidatePool, Pool, drop_missing_objectives, read_table
from loop.preflight import (
    check_columns,
    check_feasible,
    check_function,
    restrict_pool,
    restrict_space,
    safety_envelope,
)
from loop.space import SearchSpace
from oracles.base import Oracle
from oracles.functions import resolve_function
from oracles.simulated import DatasetLab, EmulatedLab
from surrogates.base import Surrogate
from surrogates.gp import GPSurrogate


def build_space(config: CampaignConfig) -> tuple[SearchSpace | None, Pool | None]:
    """The search space (for parameter spaces and tables) and the pool (for finite ones),
    cut down to the oracle's safety envelope.

    Raises:
        ConfigError: the constraints leave no point, the envelope leaves nothing, or the pool's
            table is empty, has no header or no row with its objectives.
    """
    section = config.space
    spec = config.primary_oracle
    envelope = safety_envelope(spec.options) if isinstance(spec, PluginSection) else {}
    if section.pool is not None:
        path = config.resolve(section.pool.path)
        table = drop_missing_objectives(read_table(path), [o.name for o in config.objectives], str(path))
        pool = restrict_pool(CandidatePool.from_frame(table, section.pool.inputs), envelope)
        return pool.space, pool
    if section.generator is not None:
        if envelope:
            raise ConfigError(
                "oracle.safety restricts parameter spaces and table pools, not [space.generator]"
            )
        pool = plugin(POOL_PLUGINS, section.generator.type)(section.generator.options, PluginContext(config))
        return None, surrogate_inputs(config, pool)
    space = section.build()
    check_feasible(space)
    return restrict_space(space, envelope), None


def build_oracle(
    config: CampaignConfig, space: SearchSpace | None, spec: OracleSection | None = None
) -> Oracle:
    """The oracle the configuration describes (``spec``, default its ``[oracle]`` or target
    fidelity's), checked against the space: an emulator's function by one dry call on a point
    of ``space``, a dataset by its columns.

    Raises:
        ConfigError: the function reads a parameter the space lacks or does not return an
            objective; the dataset has no column for an objective.
    """
    units = {o.name: o.unit for o in config.objectives}
    spec = spec if spec is not None else config.primary_oracle
    if isinstance(spec, PluginSection):
        return plugin(ORACLE_PLUGINS, spec.type)(spec.options, PluginContext(config))
    if isinstance(spec, EmulatorOracle):
        function = resolve_function(spec.function)
        if space is not None:
            trial = space.sample(1, config.campaign.seed)[0]
            check_function(function, spec.function, trial, [*units, *spec.properties])
        return EmulatedLab(
            function,
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
    if space is None:
        raise ConfigError("oracle.type = 'dataset' needs a table or parameter space")
    path = config.resolve(spec.path)
    table = read_table(path)
    check_columns(table, list(units), str(path))
    # A pool read from the same file has already warned about the rows it dropped.
    warned = config.space.pool is not None and config.resolve(config.space.pool.path) == path
    return DatasetLab(
        drop_missing_objectives(table, list(units), str(path), warn=not warned),
        space,
        outputs=units,
        mode=spec.mode,
        noise_sd=spec.noise_sd,
        seed=config.campaign.seed,
    )


def surrogate_inputs(config: CampaignConfig, pool: Pool) -> Pool:
    """A generated pool with the model inputs its surrogate reads: structure keys for the
    committee (which looks at the structures itself); for a GP the pair features, a universal
    model's embedding, or both (``descriptors``), and with ``prior`` a universal potential's
    formation energy last. Every kind of input leads with the atomic fractions, which the
    hull-aware acquisitions read."""
    from loop.structures import StructurePool

    section = config.surrogate
    gp_as_generated = section.type == "gp" and section.descriptors == "pairs" and section.prior is None
    if not isinstance(pool, StructurePool) or gp_as_generated:
        return pool
    elements = pool.featurizer.elements
    if section.type == "committee":
        from surrogates.structure_keys import StructureKeys

        return StructurePool(pool.candidates, StructureKeys(elements))  # type: ignore[arg-type]
    from surrogates.descriptors import EmbeddingFeaturizer, Featurizer, PriorEnergyColumn, StackedFeaturizer

    generated = config.space.generator.options.get("cache") if config.space.generator else None

    def cache(suffix: str) -> Path | None:
        return None if generated is None else config.resolve(generated).with_suffix(suffix)

    pairs, _, model = section.descriptors.rpartition("+")
    featurizer: Featurizer = pool.featurizer
    if model != "pairs":
        leading = None if pairs else elements  # fractions lead the pairs' columns already
        embedding = EmbeddingFeaturizer(model, cache(f".{model}.npz"), section.device, leading)
        featurizer = StackedFeaturizer(pool.featurizer, embedding) if pairs else embedding
    if section.prior is not None:
        featurizer = PriorEnergyColumn(
            featurizer, section.prior, elements, cache(f".{section.prior}-energy.npz"), section.device
        )
    return StructurePool(pool.candidates, featurizer)  # type: ignore[arg-type]


def input_bounds(space: SearchSpace | None, pool: Pool | None) -> torch.Tensor:
    """``2 x d`` bounds that scale model inputs once: the pool's range, or the space's bounds."""
    if pool is not None:
        X = pool.X
        bounds = torch.stack([X.min(dim=0).values, X.max(dim=0).values])
        bounds[1] = torch.where(bounds[1] > bounds[0], bounds[1], bounds[0] + 1.0)  # constant columns
        return bounds
    assert space is not None
    return space.bounds


def build_surrogate(config: CampaignConfig, space: SearchSpace | None, pool: Pool | None) -> Surrogate:
    """The surrogate: the MACE committee (:func:`build_committee`), or a GP with inputs scaled
    once (:func:`input_bounds`); with ``[transfer]``, a multi-task GP over the source
    campaigns' results.

    Raises:
        ConfigError: a transfer source cannot be read (see :func:`loop.transfer.load_sources`).
    """
    section = config.surrogate
    if section.type == "committee":
        return build_committee(config, pool)
    options: dict[str, Any] = {
        "kernel": section.kernel,
        "lengthscale_prior": section.lengthscale_prior,
        "noise": section.noise,
        "warm_start": section.warm_start,
    }
    if config.transfer is not None:
        from loop.transfer import load_sources
        from surrogates.transfer import TransferGP

        inputs = pool if pool is not None else space
        assert inputs is not None
        return TransferGP(load_sources(config, inputs), input_bounds(space, pool), **options)
    if section.prior is not None:
        assert pool is not None  # a prior needs a structure pool (checked with the configuration)
        options["prior_mean_column"] = pool.X.shape[-1] - 1  # PriorEnergyColumn puts it last
    # The objectives are the first modelled outcomes (loop.labconfig.modelled_outcomes).
    options["log_outcomes"] = [i for i, o in enumerate(config.objectives) if o.log_scale]
    return GPSurrogate(input_bounds=input_bounds(space, pool), **options)


def build_committee(config: CampaignConfig, pool: Pool | None, executor: Executor | None = None) -> Surrogate:
    """The MACE committee surrogate over a pool whose inputs are structure keys
    (:func:`surrogate_inputs`), learning from the campaign's ledger.

    Args:
        config: The configuration (``[surrogate] type = "committee"``).
        pool: The campaign's pool, as :func:`build_space` made it.
        executor: Where members train (a shared :func:`~surrogates.mlip.training_pool`);
            default: ``workers`` processes of its own.

    Raises:
        ConfigError: the pool's inputs are not structure keys, or a universal potential
            (``baseline``, ``prerelax``) cannot be loaded.
    """
    from loop.labelled_frames import LedgerFrames
    from surrogates.base import SurrogateError
    from surrogates.baseline import Baseline
    from surrogates.committee_surrogate import CommitteeSurrogate
    from surrogates.mlip import MACESettings, MLIPCommittee
    from surrogates.relaxation import RelaxSettings
    from surrogates.structure_keys import StructureKeys
    from surrogates.universal import universal_calculator

    section = config.surrogate
    keys = getattr(pool, "featurizer", None)
    if not isinstance(keys, StructureKeys):
        raise ConfigError("surrogate.type: 'committee' needs a structure pool built by build_space")
    assert config.space.generator is not None
    baseline = prerelax = None
    try:
        if section.baseline is not None:
            options = {"use_device": section.device} if section.baseline == "chgnet" else {}
            baseline = Baseline(section.baseline, options)
    except SurrogateError as exc:
        raise ConfigError(f"surrogate.baseline: {exc}") from None
    try:
        if section.prerelax is not None:
            prerelax = universal_calculator(section.prerelax, section.device)
    except SurrogateError as exc:
        raise ConfigError(f"surrogate.prerelax: {exc}") from None
    committee = MLIPCommittee(
        list(config.space.generator.options["elements"]),
        MACESettings(**section.mace),
        size=section.size,
        seed=config.campaign.seed,
        workers=section.workers,
        baseline=baseline,
        executor=executor,
    )
    relax = RelaxSettings(section.relax_steps, section.fmax, section.relax_cell)
    training = LedgerFrames(config.ledger_location, config.campaign.name)
    return CommitteeSurrogate(committee, keys, training, relax, prerelax)


def build_acquisition(
    config: CampaignConfig, space: SearchSpace | None = None, pool: Pool | None = None
) -> Acquisition:
    """The acquisition strategy; objectives become signed weights (a Pareto search, outcome
    constraints and learned feasibility: :class:`~loop.multiobjective.ModelledAcquisition`).
    The hull-aware kinds read compositions from the structure featurizer's ``x_<element>``
    inputs."""
    section = config.acquisition
    signs = [1.0 if o.direction == "maximize" else -1.0 for o in config.objectives]
    pareto = all(o.weight is None for o in config.objectives)
    weights = [s * (o.weight or 1.0) for s, o in zip(signs, config.objectives, strict=True)]
    options: dict[str, Any] = {
        "beta": section.beta,
        "mc_samples": section.mc_samples,
        "chunk_size": section.chunk_size,
        "num_restarts": section.num_restarts,
        "raw_samples": section.raw_samples,
        "max_iterations": section.max_iterations,
    }
    if not (pareto or config.constraints.outcomes or config.feasibility.learn):
        # the Pareto kinds are refused without several unweighted objectives (check_lab_sections)
        # A multi-fidelity policy (loop.fidelity_acquisition) chooses the pairs; the strategy
        # here only scalarises for it (and, for mf_hull, carries the hull target it ranks by).
        kind = cast(Kind, section.type)
        if section.type in FIDELITY_KINDS:
            kind = "hull_thompson" if section.type == "mf_hull" else "ucb"
        return Acquisition(kind, weights, hull=_hull_target(config, pool), **options)
    from loop.labconfig import modelled_outcomes
    from loop.multiobjective import ModelledAcquisition, OutcomeConstraint

    outcomes = modelled_outcomes(config)
    return ModelledAcquisition(
        section.type,
        signs,
        None if pareto else weights,
        num_outputs=len(outcomes),
        constraints=[
            OutcomeConstraint(c.name, c.op, c.value, outcomes.index(c.name))
            for c in config.constraints.outcomes
        ],
        reference_point=section.reference_point,
        trust_region=section.trust_region,
        feasibility_floor=config.feasibility.floor if config.feasibility.learn else None,
        input_bounds=input_bounds(space, pool) if config.feasibility.learn else None,
        **options,
    )


def _hull_target(config: CampaignConfig, pool: Pool | None) -> HullTarget | None:
    """The hull-aware kinds' target, on the columns of the model inputs (``pool``'s, else the
    pair featurizer's) that hold the atomic fractions."""
    section = config.acquisition
    if section.type not in (*HULL_AWARE, "mf_hull"):
        return None
    assert config.space.generator is not None  # the configuration checked it
    elements = sorted(config.space.generator.options["elements"])
    names = pool.feature_names if pool is not None else StructureFeaturizer(elements).feature_names
    return HullTarget.from_feature_names(elements, names, section.within_mev or 0.0)
