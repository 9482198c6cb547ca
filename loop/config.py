"""Campaign configuration: one TOML file, validated once by pydantic.

A wrong key, type, bound or file path gives one :class:`~loop.errors.ConfigError` that
names the key (``oracle.noise_sd: Input should be greater than or equal to 0``); nothing is
written anywhere before the whole file is valid. Relative paths are relative to the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from loop.errors import ConfigError, SpaceError, describe_validation_error
from loop.labconfig import (
    ConstraintsSection,
    FeasibilitySection,
    TransferSection,
    check_lab_sections,
    drop_unset,
    normalise_objectives,
)
from loop.provenance import config_hash
from loop.space import (
    Categorical,
    Continuous,
    Integer,
    LinearConstraint,
    Parameter,
    SearchSpace,
)

NonNegative = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignSection(_Strict):
    name: str = Field(min_length=1, max_length=200)
    seed: int = Field(default=0, ge=0)
    ledger: str = "campaign.db"
    """A file path (SQLite; relative to the config file) or an SQLAlchemy URL."""


class ParameterConfig(_Strict):
    name: str = Field(min_length=1)
    type: Literal["continuous", "integer", "categorical"]
    lower: float | None = None
    upper: float | None = None
    choices: list[str] | None = None
    unit: str = ""

    @model_validator(mode="after")
    def _complete(self) -> ParameterConfig:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError(f"categorical parameter {self.name!r} needs 'choices'")
        elif self.lower is None or self.upper is None:
            raise ValueError(f"{self.type} parameter {self.name!r} needs 'lower' and 'upper'")
        elif self.lower > self.upper:
            raise ValueError(f"parameter {self.name!r}: lower {self.lower} > upper {self.upper}")
        elif self.type == "integer" and (self.lower != int(self.lower) or self.upper != int(self.upper)):
            raise ValueError(f"integer parameter {self.name!r} needs integer bounds")
        return self

    def build(self) -> Parameter:
        if self.type == "categorical":
            return Categorical(self.name, tuple(self.choices or ()), self.unit)
        if self.type == "integer":
            return Integer(self.name, int(self.lower or 0), int(self.upper or 0), self.unit)
        return Continuous(self.name, float(self.lower or 0), float(self.upper or 0), self.unit)


class ConstraintConfig(_Strict):
    type: Literal["simplex", "linear"]
    parameters: list[str] | None = None
    total: float = 1.0
    coefficients: dict[str, float] | None = None
    rhs: float | None = None
    sense: Literal["<=", ">=", "=="] = "<="

    @model_validator(mode="after")
    def _complete(self) -> ConstraintConfig:
        if self.type == "simplex" and not self.parameters:
            raise ValueError("a simplex constraint needs 'parameters'")
        if self.type == "linear" and (not self.coefficients or self.rhs is None):
            raise ValueError("a linear constraint needs 'coefficients' and 'rhs'")
        return self

    def build(self) -> LinearConstraint:
        if self.type == "simplex":
            return LinearConstraint.simplex(self.parameters or [], self.total)
        return LinearConstraint(tuple((self.coefficients or {}).items()), float(self.rhs or 0), self.sense)


class PoolConfig(_Strict):
    path: Path
    inputs: list[str] = Field(min_length=1)


#: Plug-in sections: ``type`` → ``"module:function"`` that builds the object from the
#: section's options (and validates them, raising ConfigError that names the key).
ORACLE_PLUGINS: dict[str, str] = {
    "robot": "oracles.robot:oracle_from_config",
    "dft": "oracles.dft:oracle_from_config",
}
POOL_PLUGINS: dict[str, str] = {
    "structures": "loop.structures:pool_from_config",
}


class PluginSection(BaseModel):
    """A section whose options belong to a plug-in; it validates them when it is built."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SpaceSection(_Strict):
    """A finite ``pool`` from a table, ``parameters`` (with ``constraints``), or a
    ``generator`` plug-in that makes a pool (crystal structures, say)."""

    pool: PoolConfig | None = None
    parameters: list[ParameterConfig] = []
    constraints: list[ConstraintConfig] = []
    generator: PluginSection | None = None

    @field_validator("parameters")
    @classmethod
    def _distinct_names(cls, parameters: list[ParameterConfig]) -> list[ParameterConfig]:
        names = [p.name for p in parameters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"parameter names must be unique, repeated: {repeated}")
        return parameters

    @field_validator("generator")
    @classmethod
    def _known_generator(cls, generator: PluginSection | None) -> PluginSection | None:
        if generator is not None and generator.type not in POOL_PLUGINS:
            raise ValueError(f"unknown generator type {generator.type!r}; known: {sorted(POOL_PLUGINS)}")
        return generator

    @model_validator(mode="after")
    def _one_kind(self) -> SpaceSection:
        kinds = [self.pool is not None, bool(self.parameters), self.generator is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of 'pool', 'parameters' or 'generator'")
        if self.parameters:
            try:
                self.build()
            except SpaceError as exc:
                raise ValueError(str(exc)) from None
        if not self.parameters and self.constraints:
            raise ValueError("constraints apply to 'parameters' spaces, not to pools")
        return self

    def build(self) -> SearchSpace:
        return SearchSpace([p.build() for p in self.parameters], [c.build() for c in self.constraints])


class ObjectiveConfig(_Strict):
    name: str = Field(min_length=1)
    direction: Literal["maximize", "minimize"] = "maximize"
    unit: str = ""
    weight: float | None = Field(default=None, gt=0)
    """Weight of this objective in the scalarised target when there are several; several
    objectives without weights mean a Pareto search (:mod:`loop.labconfig`)."""
    target: float | None = None
    """Stop once a measured value reaches it (>= when maximising, <= when minimising)."""


#: Universal potentials by name (:data:`surrogates.universal.KNOWN_MODELS`).
UniversalModel = Literal["chgnet", "mace-mp", "sevennet", "mattersim", "orb"]
_GP_KEYS = ("kernel", "lengthscale_prior", "noise", "warm_start", "descriptors", "calibration")
_COMMITTEE_KEYS = ("size", "mace", "baseline", "prerelax", "relax_steps", "fmax", "relax_cell", "workers")


class SurrogateSection(_Strict):
    """``[surrogate]``: a GP (``type = "gp"``) on a pool's features, or a MACE committee
    (``type = "committee"``) that relaxes and scores structure candidates itself. A key of one
    type given with the other is refused, naming the key."""

    type: Literal["gp", "committee"] = "gp"
    kernel: Literal["matern52", "rbf"] = "matern52"
    lengthscale_prior: bool = True
    noise: Literal["inferred", "observed"] = "inferred"
    warm_start: bool = True
    calibration: Literal["none", "scale", "conformal"] = "none"
    """Recalibration of the predictive std from the campaign's own z-scores
    (:mod:`loop.calibration`), used by the stopping rules and the acquisition."""
    descriptors: Literal["pairs", "chgnet", "mace-mp"] = "pairs"
    """Structure pools: the GP's inputs, pair features or the embedding of a universal model
    that offers one (:func:`surrogates.universal.structure_embedding`)."""
    size: int = Field(default=4, ge=2, le=64)
    """Committee members."""
    mace: dict[str, Any] = {}
    """A member's architecture and training (:class:`surrogates.mlip.MACESettings` keys)."""
    baseline: str | None = None
    """A universal potential the members correct: ``"chgnet"`` or an ASE calculator ``"module:Class"``."""
    prerelax: UniversalModel | None = None
    """A universal potential that relaxes candidates before the committee does."""
    relax_steps: int = Field(default=20, ge=0, le=10_000)
    """FIRE steps of each relaxation before a candidate is scored (0: scored as generated)."""
    fmax: float = Field(default=0.05, gt=0, allow_inf_nan=False)
    """Relaxations stop once every force is below this (eV/Å)."""
    relax_cell: bool = False
    """Relax the cell too, not only the positions (as the oracle's ``relax_cell``)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where universal models run (baseline, pre-relaxation, descriptors)."""
    workers: int = Field(default=2, ge=1, le=64)
    """Processes the committee's members train in."""

    @field_validator(*_GP_KEYS, *_COMMITTEE_KEYS)
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        owner = "gp" if info.field_name in _GP_KEYS else "committee"
        if info.data.get("type", owner) != owner:
            raise ValueError(f"applies only to type = {owner!r}")
        return value

    @field_validator("mace")
    @classmethod
    def _mace_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            from surrogates.mlip.settings import MACESettings

            known = set(MACESettings.__dataclass_fields__)
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} (known: {sorted(known)})")
            try:
                MACESettings(**value)
            except (TypeError, ValueError) as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("baseline")
    @classmethod
    def _baseline_name(cls, value: str | None) -> str | None:
        if value is not None and value != "chgnet" and ":" not in value:
            raise ValueError(f"'chgnet' or an ASE calculator 'module:Class', got {value!r}")
        return value

    def check_space(self, space: SpaceSection, objectives: list[ObjectiveConfig]) -> None:
        """Refuse a structure surrogate where there are no structures to look at.

        Raises:
            ValueError: naming ``surrogate.type`` or ``surrogate.descriptors``.
        """
        structures = space.generator is not None and space.generator.type == "structures"
        if self.type == "committee":
            names = [o.name for o in objectives]
            if not structures:
                raise ValueError(
                    "surrogate.type: 'committee' needs a structure pool "
                    "([space.generator] type = 'structures')"
                )
            if names != ["formation_energy_per_atom"]:
                raise ValueError(
                    "surrogate.type: 'committee' predicts the one objective 'formation_energy_per_atom'; "
                    f"the objectives are {names}"
                )
        if self.descriptors != "pairs" and not structures:
            raise ValueError(
                "surrogate.descriptors: learned descriptors need a structure pool "
                "([space.generator] type = 'structures')"
            )


class AcquisitionSection(_Strict):
    type: Literal[
        "ucb",
        "qlogei",
        "qlognei",
        "max_variance",
        "thompson",
        "random",
        "qlognehvi",
        "qparego",
        "hull_probability",
        "hull_lcb",
        "mf_mes",
        "mf_ucb",
        "funnel",
    ] = "qlognei"
    beta: NonNegative = 1.0
    """UCB/LCB: mean ± sqrt(beta) · std (beta = 1 is one standard deviation)."""
    within_mev: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """``hull_probability``: the probability of landing within this many meV/atom of the
    current hull is maximised (default 0: on or below it)."""
    batch_size: int = Field(default=1, ge=1, le=1000)
    initial_designs: int = Field(default=4, ge=1)
    """Random designs before the first model fit."""
    chunk_size: int = Field(default=4096, ge=1)
    """Pool candidates scored per chunk (memory grows with chunk_size x n)."""
    num_restarts: int = Field(default=10, ge=1)
    raw_samples: int = Field(default=256, ge=1)
    mc_samples: int = Field(default=128, ge=1)
    max_iterations: int = Field(default=200, ge=1)
    """Iterations of the continuous optimiser per restart."""
    reference_point: list[float] | None = None
    """Pareto search: the hypervolume's reference point, one value per objective in its own
    sign and units (default: inferred from the front)."""

    @model_validator(mode="after")
    def _within_for_hull(self) -> AcquisitionSection:
        if self.within_mev is not None and self.type != "hull_probability":
            raise ValueError("'within_mev' applies only with type = 'hull_probability'")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_within(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Campaigns written before 'within_mev' existed keep their configuration hash.
        data: dict[str, Any] = handler(self)
        if data.get("within_mev") is None:
            data.pop("within_mev", None)
        return data

    def check_hull(self, objectives: list[ObjectiveConfig], space: SpaceSection) -> None:
        """Refuse a hull-aware acquisition where there is no hull: it needs formation energy
        per atom as the one, minimised, objective and a structure pool (compositions).

        Raises:
            ValueError: naming ``acquisition.type``.
        """
        if self.type not in ("hull_probability", "hull_lcb"):
            return
        if [(o.name, o.direction) for o in objectives] != [("formation_energy_per_atom", "minimize")]:
            raise ValueError(
                f"acquisition.type = {self.type!r} needs one objective, 'formation_energy_per_atom', "
                f"minimised; the objectives are {[o.name for o in objectives]}"
            )
        if space.generator is None or space.generator.type != "structures":
            raise ValueError(
                f"acquisition.type = {self.type!r} needs a structure pool "
                "([space.generator] type = 'structures')"
            )


class StoppingSection(_Strict):
    max_experiments: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1)
    """Stop after this many cycles without improving the best value."""
    min_expected_improvement: float | None = Field(default=None, ge=0)
    """Stop when the best expected improvement over the space falls below this."""
    near_hull_mev: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Structure pools: the goal of finding every structure within this many meV/atom of the
    convex hull; met (and the campaign stops) once no unevaluated candidate's lower bound of
    formation energy, mean - ``near_hull_sigmas`` · std, comes that close to the current hull."""
    near_hull_sigmas: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    """Standard deviations of the surrogate below its mean where the near-hull rule's bound lies."""

    @model_validator(mode="after")
    def _has_budget(self) -> StoppingSection:
        if self.max_experiments is None and self.max_cost is None:
            raise ValueError("set a budget: 'max_experiments' or 'max_cost'")
        if "near_hull_sigmas" in self.model_fields_set and self.near_hull_mev is None:
            raise ValueError("'near_hull_sigmas' applies only with 'near_hull_mev'")
        return self

    def check_goal(self, objectives: list[ObjectiveConfig], space: SpaceSection) -> None:
        """Refuse a near-hull goal where it means nothing: it needs formation energies measured
        and a structure pool, whose candidates have compositions on the hull.

        Raises:
            ValueError: naming ``stopping.near_hull_mev``.
        """
        if self.near_hull_mev is None:
            return
        names = [o.name for o in objectives]
        if "formation_energy_per_atom" not in names:
            raise ValueError(
                "stopping.near_hull_mev: the near-hull goal needs the objective "
                f"'formation_energy_per_atom'; the objectives are {names}"
            )
        if space.generator is None or space.generator.type != "structures":
            raise ValueError(
                "stopping.near_hull_mev: the near-hull goal needs a structure pool "
                "([space.generator] type = 'structures')"
            )


class OracleRetries(BaseModel):
    """``[oracle]`` keys of the engine-free loop: retries of an evaluation that failed with a
    retryable oracle error (never other errors), after ``retry_delay_s · retry_backoff^(n-1)``
    seconds. Not part of the campaign's identity (they may change on resume)."""

    retries: int = Field(default=0, ge=0, le=100)
    retry_delay_s: float = Field(default=0.0, ge=0)
    retry_backoff: float = Field(default=2.0, ge=1)


class OraclePluginSection(PluginSection, OracleRetries):
    """A plug-in oracle's section: its own options, and the retry keys."""


class EmulatorOracle(_Strict, OracleRetries):
    type: Literal["emulator"]
    function: str
    noise_sd: NonNegative | dict[str, NonNegative] = 0.0
    latency_s: NonNegative = 0.0
    failure_probability: float = Field(default=0.0, ge=0, le=1)
    invalid_probability: float = Field(default=0.0, ge=0, le=1)
    cost_per_experiment: NonNegative = 1.0
    capacity: int = Field(default=1, ge=1)
    journal: Path | None = None
    properties: dict[str, str] = {}
    """Extra reported properties (name → unit) besides the objectives."""


class DatasetOracle(_Strict, OracleRetries):
    type: Literal["dataset"]
    path: Path
    mode: Literal["replicate", "mean"] = "mean"
    noise_sd: NonNegative = 0.0


OracleSection = EmulatorOracle | DatasetOracle | OraclePluginSection


def oracle_section(oracle: Any) -> Any:
    """An ``[oracle]`` mapping validated as the section its ``type`` names (a built-in or a
    plug-in's), or the value as given for pydantic to refuse."""
    if isinstance(oracle, Mapping):
        kind = oracle.get("type")
        builtin: dict[str, type[BaseModel]] = {"emulator": EmulatorOracle, "dataset": DatasetOracle}
        if kind in builtin:
            return builtin[kind].model_validate(oracle)
        if kind not in ORACLE_PLUGINS:
            raise ValueError(f"unknown oracle type {kind!r}; known: {sorted([*builtin, *ORACLE_PLUGINS])}")
        return OraclePluginSection.model_validate(oracle)
    return oracle


class FidelitySection(_Strict):
    """One ``[[oracles]]`` entry: a whole oracle section (as ``[oracle]``) with the name of the
    fidelity it measures at and what one evaluation costs there, in the campaign's cost unit."""

    fidelity: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    cost: float = Field(gt=0, allow_inf_nan=False)
    target: bool = False
    """The fidelity the campaign optimises (default: the most expensive one)."""
    oracle: OracleSection

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        # The TOML entry is flat: the fidelity's keys and the oracle's keys side by side.
        if not isinstance(data, Mapping) or "oracle" in data:
            return data
        own = {key: data[key] for key in ("fidelity", "cost", "target") if key in data}
        rest = {key: value for key, value in data.items() if key not in own}
        return {**own, "oracle": oracle_section(rest)}

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {**data.pop("oracle"), **data}


def check_fidelities(entries: list[FidelitySection]) -> list[FidelitySection]:
    """Refuse ``[[oracles]]`` that do not make a multi-fidelity campaign: fewer than two
    entries, a fidelity named twice, two robot fidelities, several targets, or no single most
    expensive one."""
    if len(entries) < 2:
        raise ValueError("give two or more entries (one oracle is [oracle])")
    names = [e.fidelity for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"fidelity names must be unique, repeated: {repeated}")
    robots = [e.fidelity for e in entries if isinstance(e.oracle, PluginSection) and e.oracle.type == "robot"]
    if len(robots) > 1:  # a robot run is keyed by (campaign, candidate): two would share their runs
        raise ValueError(f"at most one fidelity may use the robot oracle, these do: {robots}")
    marked = [e.fidelity for e in entries if e.target]
    if len(marked) > 1:
        raise ValueError(f"only one fidelity may be the target, marked: {marked}")
    if not marked:
        top = max(e.cost for e in entries)
        dearest = [e.fidelity for e in entries if e.cost == top]
        if len(dearest) > 1:
            raise ValueError(f"{dearest} cost the most alike: mark the target with 'target = true'")
    return entries


class ExecutionSection(_Strict):
    """How a workflow engine (``flows/``) runs the campaign; the engine-free loop ignores it,
    and it is not part of the campaign's identity (a campaign may move from threads to Dask)."""

    task_runner: Literal["thread", "dask"] = "thread"
    """Where oracle evaluations run: threads of the flow process, or a Dask cluster."""
    max_workers: int | None = Field(default=None, ge=1)
    """Thread runner: evaluations at once (default: the oracle's capacity)."""
    address: str | None = None
    """Dask: the address of a running scheduler (``tcp://host:8786``) instead of a new cluster."""
    cluster_class: str | None = None
    """Dask: the cluster to start, as ``module.Class`` (default ``distributed.LocalCluster``)."""
    cluster_kwargs: dict[str, Any] = {}
    """Dask: keyword arguments of the cluster class (``n_workers``, ``cores``, ``walltime``...)."""
    adapt_kwargs: dict[str, Any] | None = None
    """Dask: adaptive scaling (``minimum``, ``maximum``); default: a fixed-size cluster."""
    evaluations_per_task: int = Field(default=1, ge=1)
    """Candidates one task evaluates one after another: many short oracle calls per Dask task
    and batch job (as pilot jobs do), so the scheduler and the batch queue are not flooded."""
    retries: int = Field(default=0, ge=0, le=100)
    """Retries of an evaluation that failed with a retryable oracle error (never other errors)."""
    retry_delay_s: float = Field(default=0.0, ge=0)
    """Seconds between retries."""
    approval: bool = False
    """Pause before each batch is dispatched until a person approves, rejects or edits it."""
    approval_timeout_s: int = Field(default=24 * 3600, ge=1)
    """How long a paused batch waits for its reviewer before the flow run fails."""
    lock_wait_s: float = Field(default=0.0, ge=0)
    """How long a run waits for another run of the same campaign to finish before it exits."""
    lock_lease_s: float = Field(default=60.0, ge=1)
    """The campaign lock's lease, renewed while held; a holder that died frees it after this."""

    @model_validator(mode="after")
    def _consistent(self) -> ExecutionSection:
        dask_only = {
            "address": self.address,
            "cluster_class": self.cluster_class,
            "cluster_kwargs": self.cluster_kwargs or None,
            "adapt_kwargs": self.adapt_kwargs,
        }
        if self.task_runner != "dask":
            given = [k for k, v in dask_only.items() if v is not None]
            if given:
                raise ValueError(f"{given} only apply to task_runner = 'dask'")
        elif self.address is not None and (self.cluster_class or self.cluster_kwargs or self.adapt_kwargs):
            raise ValueError("give either 'address' (an existing scheduler) or a cluster to start, not both")
        if self.task_runner == "dask" and self.max_workers is not None:
            raise ValueError("'max_workers' applies to task_runner = 'thread'; size a Dask cluster instead")
        return self


class CampaignConfig(_Strict):
    """A whole campaign file."""

    campaign: CampaignSection
    space: SpaceSection
    objectives: list[ObjectiveConfig] = Field(min_length=1)
    surrogate: SurrogateSection = SurrogateSection()
    acquisition: AcquisitionSection = AcquisitionSection()
    oracle: OracleSection | None = None
    oracles: list[FidelitySection] | None = None
    """Multi-fidelity campaigns: one oracle per fidelity (:mod:`loop.fidelity`), instead of ``oracle``."""
    stopping: StoppingSection
    execution: ExecutionSection = ExecutionSection()
    constraints: ConstraintsSection = ConstraintsSection()
    feasibility: FeasibilitySection = FeasibilitySection()
    transfer: TransferSection | None = None
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, objectives: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be distinct, got {names}")
        return objectives

    _oracle_kind = field_validator("oracle", mode="before")(oracle_section)
    _fidelities = field_validator("oracles")(check_fidelities)

    @model_validator(mode="before")
    @classmethod
    def _not_both_oracle_kinds(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "oracle" in data and "oracles" in data:
            raise ValueError("oracles: give [oracle] or [[oracles]] (one per fidelity), not both")
        return data

    @model_validator(mode="after")
    def _an_oracle(self) -> CampaignConfig:
        if self.oracle is None and self.oracles is None:
            raise ValueError("oracle: Field required (or [[oracles]], one per fidelity)")
        return self

    _objectives_mode = model_validator(mode="before")(normalise_objectives)

    @model_validator(mode="after")
    def _lab_sections(self) -> CampaignConfig:
        check_lab_sections(self)
        return self

    @model_validator(mode="after")
    def _stopping_goal(self) -> CampaignConfig:
        self.stopping.check_goal(self.objectives, self.space)
        self.surrogate.check_space(self.space, self.objectives)
        return self

    @model_validator(mode="after")
    def _acquisition_hull(self) -> CampaignConfig:
        self.acquisition.check_hull(self.objectives, self.space)
        return self

    @model_validator(mode="after")
    def _fidelity_campaign(self) -> CampaignConfig:
        from loop.fidelity import check_fidelity_campaign

        check_fidelity_campaign(self)
        return self

    @model_validator(mode="after")
    def _files_exist(self) -> CampaignConfig:
        files = {"space.pool.path": self.space.pool.path if self.space.pool else None}
        for key, section in self.oracle_sections().items():
            if isinstance(section, DatasetOracle):
                files[f"{key}.path"] = section.path
        for key, path in files.items():
            if path is not None and not self.resolve(path).is_file():
                raise ValueError(f"{key}: file {str(self.resolve(path))!r} does not exist")
        return self

    def resolve(self, path: str | Path) -> Path:
        """A path from the file, made absolute against the file's folder."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def primary_oracle(self) -> OracleSection:
        """The ``[oracle]`` section, or the target fidelity's oracle of ``[[oracles]]``."""
        if self.oracles is None:
            assert self.oracle is not None  # one of the two is given (_an_oracle)
            return self.oracle
        marked = [e for e in self.oracles if e.target]
        return (marked[0] if marked else max(self.oracles, key=lambda e: e.cost)).oracle

    def oracle_sections(self) -> dict[str, OracleSection]:
        """Each oracle section by its dotted key (``oracle``, or ``oracles.0``, ``oracles.1``...)."""
        if self.oracles is None:
            return {"oracle": self.primary_oracle}
        return {f"oracles.{i}": e.oracle for i, e in enumerate(self.oracles)}

    @property
    def ledger_location(self) -> str:
        ledger = self.campaign.ledger
        return ledger if "://" in ledger else str(self.resolve(ledger))

    def identity(self) -> dict[str, Any]:
        """What defines the campaign: everything but the stopping rules (which may change
        on resume), how it is executed and where the ledger is."""
        identity = self.model_dump(
            mode="json",
            exclude={
                "stopping": True,
                "execution": True,
                "campaign": {"ledger"},
                "oracle": set(OracleRetries.model_fields),
                "oracles": {"__all__": {"oracle": set(OracleRetries.model_fields)}},
            },
        )
        return drop_unset(identity, self)

    @property
    def hash(self) -> str:
        return config_hash(self.identity())


def read_toml(path: Path) -> dict[str, Any]:
    """The content of a TOML file.

    Raises:
        ConfigError: the file is missing or is not TOML.
    """
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> CampaignConfig:
    """Read and validate a campaign TOML file.

    Args:
        path: The TOML file.
        overrides: Dotted keys to set before validation, e.g. ``{"campaign.ledger": "x.db"}``.

    Raises:
        ConfigError: the file is missing, is not TOML, or fails validation; the message names
            every offending key.
    """
    path = Path(path)
    data = read_toml(path)
    for dotted, value in (overrides or {}).items():
        section = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = value
    return parse_config(data, base_dir=path.parent.resolve(), source=str(path))


def parse_config(
    data: Mapping[str, Any], base_dir: Path = Path("."), source: str = "config"
) -> CampaignConfig:
    """Validate a configuration given as a dictionary (the TOML's content)."""
    try:
        return CampaignConfig.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
