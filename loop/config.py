"""Campaign configuration: one TOML file, validated once by pydantic.

A wrong key, type, bound or file path gives one :class:`~loop.errors.ConfigError` that
names the key (``oracle.noise_sd: Input should be greater than or equal to 0``); nothing is
written anywhere before the whole file is valid. Relative paths are relative to the file.

Each section has its own module (``loop/config_*.py``, :mod:`loop.labconfig`,
:mod:`loop.plugins`); this one holds the whole file, :class:`CampaignConfig`, which checks
the sections against each other, and re-exports the sections.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from loop.config_acquisition import AcquisitionSection
from loop.config_base import NonNegative, Strict
from loop.config_execution import ExecutionSection
from loop.config_oracles import (
    DatasetOracle,
    EmulatorOracle,
    FidelitySection,
    OraclePluginSection,
    OracleRetries,
    OracleSection,
    check_fidelities,
    oracle_section,
)
from loop.config_space import ConstraintConfig, ObjectiveConfig, ParameterConfig, PoolConfig, SpaceSection
from loop.config_stopping import StoppingSection
from loop.config_surrogate import SurrogateSection, UniversalModel
from loop.errors import ConfigError, describe_validation_error
from loop.fidelity import without_default_recalibration
from loop.labconfig import (
    ConstraintsSection,
    FeasibilitySection,
    TransferSection,
    check_lab_sections,
    drop_unset,
    normalise_objectives,
)
from loop.plugins import ORACLE_PLUGINS, POOL_PLUGINS, PluginSection
from loop.provenance import config_hash

__all__ = [
    "ORACLE_PLUGINS",
    "POOL_PLUGINS",
    "AcquisitionSection",
    "CampaignConfig",
    "CampaignSection",
    "ConstraintConfig",
    "DatasetOracle",
    "EmulatorOracle",
    "ExecutionSection",
    "FidelitySection",
    "NonNegative",
    "ObjectiveConfig",
    "OraclePluginSection",
    "OracleRetries",
    "OracleSection",
    "ParameterConfig",
    "PluginSection",
    "PoolConfig",
    "SpaceSection",
    "StoppingSection",
    "SurrogateSection",
    "UniversalModel",
    "check_fidelities",
    "load_config",
    "oracle_section",
    "parse_config",
    "read_toml",
]


class CampaignSection(Strict):
    name: str = Field(min_length=1, max_length=200)
    seed: int = Field(default=0, ge=0)
    ledger: str = "campaign.db"
    """A file path (SQLite; relative to the config file) or an SQLAlchemy URL."""


class CampaignConfig(Strict):
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
    _fidelity_recalibration = model_validator(mode="before")(without_default_recalibration)

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
    def _prior_without_transfer(self) -> CampaignConfig:
        if self.surrogate.prior is not None and self.transfer is not None:
            raise ValueError(
                "surrogate.prior: a universal potential's prior mean is not offered with [transfer] "
                "(its multi-task GP keeps a constant mean per campaign)"
            )
        return self

    @model_validator(mode="after")
    def _log_scale_on_a_gp(self) -> CampaignConfig:
        logged = [o.name for o in self.objectives if o.log_scale]
        if not logged:
            return self
        refusals = {
            "the MACE committee models energies as they are": self.surrogate.type == "committee",
            "the multi-task GP of [transfer] models each outcome as it is": self.transfer is not None,
            "the multi-fidelity GP of [[oracles]] models each outcome as it is": self.oracles is not None,
            "surrogate.noise = 'observed' gives variances of the values, not of their logarithms": (
                self.surrogate.noise == "observed"
            ),
            "a hull acquisition reads formation energies, which are negative": (
                self.acquisition.type.startswith("hull")
            ),
            "a recalibrated acquisition needs a Gaussian posterior, and a log scale's is log-normal "
            "(calibration_applies_to = 'stopping' keeps the recalibration for the stopping rules)": (
                self.surrogate.calibration != "none" and self.surrogate.calibration_applies_to == "all"
            ),
        }
        reasons = [reason for reason, applies in refusals.items() if applies]
        if reasons:
            raise ValueError(f"objectives.log_scale ({', '.join(logged)}): not offered here: {reasons[0]}")
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
        on resume), how it is executed (``[execution]``, the retry keys, each fidelity's
        ``task_runner``), where the ledger is, and a default recalibration, which serves the
        stopping rules only (:meth:`SurrogateSection.identity`)."""
        identity = self.model_dump(
            mode="json",
            exclude={
                "surrogate": True,
                "stopping": True,
                "execution": True,
                "campaign": {"ledger"},
                "oracle": set(OracleRetries.model_fields),
                "oracles": {"__all__": {"oracle": set(OracleRetries.model_fields), "task_runner": True}},
            },
        )
        identity["surrogate"] = self.surrogate.identity()
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
