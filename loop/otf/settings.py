"""The on-the-fly settings and their TOML file, validated once by strict pydantic sections.

One TOML file describes a run::

    [run]        name, ledger, workdir
    [structure]  the starting cell: a file ASE reads, or element/lattice/a/repeat/vacancies
    [[walkers]]  WalkerSpec fields: name, steps, temperature_k = [start, end], thermostat...
    [committee]  size, seed, workers, and MACESettings fields (channels, r_max, epochs...)
    [otf]        OTFSettings fields: tolerance_ev_per_a, target_miss_rate, stop_after_calls...
    [oracle]     the DFT runner's options (calculator = "emt" | "gpaw" | "module:Class"...),
                 always single points

Every section is a frozen pydantic dataclass that forbids unknown keys; the same checks run
whether a section comes from the file or is built in Python. An unknown key, a wrong type or
an out-of-range value is one :class:`~loop.errors.ConfigError` naming it
(``walkers.0.steps: Input should be greater than or equal to 1``), before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, dataclass_transform

from ase import Atoms
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from loop.config import read_toml
from loop.errors import ConfigError, describe_validation_error, validate_section
from surrogates.mlip import MACESettings

T = TypeVar("T")

Thermostat = Literal["langevin", "bussi", "npt_berendsen"]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A finite float above 0."""


@dataclass_transform(frozen_default=True)  # type checkers see the sections as frozen dataclasses
def section(prefix: str) -> Callable[[type[T]], type[T]]:
    """Make ``cls`` a frozen pydantic dataclass that forbids unknown keys, and whose construction
    in Python raises one :class:`ConfigError` naming the key (``<prefix>.<key>: ...``).

    Inside a larger section (the TOML file) pydantic reports the full path instead.
    """

    def decorate(cls: type[T]) -> type[T]:
        validated: Any = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
        init = validated.__init__
        names = [f.name for f in dataclasses.fields(validated)]

        @functools.wraps(init)
        def construct(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, **dict(zip(names, args, strict=False)), **kwargs)  # named: errors name the key
            except ValidationError as exc:
                raise ConfigError(describe_validation_error(exc, prefix)) from None

        validated.__init__ = construct
        return validated

    return decorate


@section("walker")
class WalkerSpec:
    """One MD walker.

    Args:
        name: Unique name (in logs, the ledger and checkpoints).
        steps: MD steps to run.
        temperature_k: Start and end of a linear temperature ramp (K).
        seed: Seeds the initial velocities and the thermostat's noise.
        thermostat: ``langevin`` (NVT), ``bussi`` (NVT, stochastic velocity rescaling) or
            ``npt_berendsen`` (NPT).
        timestep_fs: MD time step (fs).
        friction_per_fs: Langevin friction (1/fs).
        taut_fs: Bussi / Berendsen thermostat time constant (fs).
        pressure_gpa: Berendsen NPT target pressure (GPa).
    """

    name: Annotated[str, Field(min_length=1)]
    steps: Annotated[int, Field(ge=1)]
    temperature_k: tuple[Positive, Positive] = (300.0, 300.0)
    seed: int = 0
    thermostat: Thermostat = "langevin"
    timestep_fs: Positive = 5.0
    friction_per_fs: Positive = 0.02
    taut_fs: Positive = 100.0
    pressure_gpa: float = 0.0

    def temperature_at(self, step: int) -> float:
        """Target temperature (K) at ``step`` of the ramp."""
        start, end = self.temperature_k
        return start + (end - start) * min(step / max(self.steps - 1, 1), 1.0)

    def ramping(self, step: int) -> bool:
        """Whether the walker is still on its way to new conditions at ``step``."""
        return self.temperature_k[0] != self.temperature_k[1] and step < self.steps - 1


@section("otf")
class OTFSettings:
    """How the loop decides to call the oracle, guards walkers and stops.

    Args:
        tolerance_ev_per_a: Largest acceptable force error of a frame (eV/Å, root mean square
            over atoms, :func:`~surrogates.mlip.force_error`).
        target_miss_rate: Share of steps allowed to exceed the tolerance without a call.
        initial_threshold_ev_per_a: The threshold when not calibrating (eV/Å); when calibrating,
            it holds until ``min_calibration_calls`` ratios are in, while walkers only audit.
        calibrate: Adjust the threshold online (else it stays at the initial value).
        threshold_bounds: The calibrated threshold stays within these (eV/Å).
        min_calibration_calls: Ratios needed before the threshold is calibrated.
        window_steps: Recent steps whose uncertainties the calibration weighs.
        label_every: Label every k-th step instead (a baseline; ignores the uncertainty).
        audit_every: A walker labels the frame it was least sure of since its last call once
            its steps since then, each counted as uncertainty / threshold (at most 1), add up
            to this (0: never). The calibration then also sees frames below the threshold, and
            audits go where the committee is least sure.
        initial_frames: Rattled copies of each walker's start labelled before the first fit.
        initial_rattle_a: Their largest random displacement (Å, standard deviation); the
            copies are rattled at evenly spaced amplitudes up to it, so the first fit sees
            displacements as large as the hottest walker will make.
        min_steps_between_calls: A walker labels at most one frame in this many steps (the
            next frames are nearly the same configuration; the retrained committee learns them).
        stop_after_calls: ``K`` of the stopping rule (0 never stops calling).
        stop_quiet_steps: ``M`` of the stopping rule (steps, summed over walkers).
        min_distance_a: Atoms closer than this trip the collision guard (Å).
        max_temperature_factor: A walker hotter than this times its target trips the guard.
        snapshot_every: Steps between the snapshots a guard rolls back to.
        max_rollbacks: Rollbacks in a row (without a snapshot in between) before a walker is lost.
        max_oracle_calls: Most oracle calls in all (``None``: no limit).
        final_fit: Refit the committee from scratch on every frame once the loop stops calling.
    """

    tolerance_ev_per_a: Positive = 0.2
    target_miss_rate: Annotated[float, Field(gt=0, lt=1)] = 0.02
    initial_threshold_ev_per_a: Positive = 0.03
    calibrate: bool = True
    threshold_bounds: tuple[float, float] = (0.005, 1.0)
    min_calibration_calls: Annotated[int, Field(ge=1)] = 5
    window_steps: Annotated[int, Field(ge=1)] = 2000
    label_every: Annotated[int, Field(ge=1)] | None = None
    audit_every: Annotated[float, Field(ge=0)] = 100.0
    initial_frames: Annotated[int, Field(ge=0)] = 4
    initial_rattle_a: Annotated[float, Field(ge=0)] = 0.05
    min_steps_between_calls: Annotated[int, Field(ge=1)] = 10
    stop_after_calls: Annotated[int, Field(ge=0)] = 5
    stop_quiet_steps: Annotated[int, Field(ge=0)] = 500
    min_distance_a: Positive = 1.5
    max_temperature_factor: Annotated[float, Field(gt=1)] = 3.0
    snapshot_every: Annotated[int, Field(ge=1)] = 20
    max_rollbacks: Annotated[int, Field(ge=1)] = 5
    max_oracle_calls: Annotated[int, Field(ge=1)] | None = None
    final_fit: bool = True

    @field_validator("threshold_bounds")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"need 0 < low <= high, got {bounds}")
        return bounds


@section("run")
class RunSection:
    """``[run]``: the campaign name, its ledger (file or URL) and the run folder."""

    name: Annotated[str, Field(min_length=1)]
    ledger: str = "otf.db"
    workdir: str = "runs"


@section("structure")
class StructureSection:
    """``[structure]``: ``file`` (anything ASE reads), or a bulk cell built by ASE."""

    file: str | None = None
    element: str = "Cu"
    lattice: str = "fcc"
    a: Positive | None = None
    repeat: tuple[int, int, int] = (2, 2, 2)
    vacancies: Annotated[int, Field(ge=0)] = 0
    rattle_a: Annotated[float, Field(ge=0)] = 0.0
    seed: int = 0


@section("committee")
class CommitteeSection:
    """``[committee]``: size, seed, training processes, an optional pretrained ``baseline``
    (``"chgnet"`` or ``"module:Class"``, see :mod:`surrogates.baseline`); the table's other
    keys are :class:`MACESettings`."""

    size: Annotated[int, Field(ge=2)] = 4
    seed: int = 0
    workers: Annotated[int, Field(ge=1)] = 2
    baseline: str | None = None


# MACESettings is the surrogate's plain dataclass; a strict validating copy checks its keys.
_MACE_KEYS = TypeAdapter(pydantic_dataclass(MACESettings, frozen=True, config=ConfigDict(extra="forbid")))


class _OracleTable(BaseModel, extra="allow"):
    """``[oracle]``: the DFT runner's options (it checks them); always single points."""

    type: Literal["dft"] = "dft"
    mode: Literal["single_point"] = "single_point"

    @model_validator(mode="after")
    def _no_prerelax(self) -> _OracleTable:
        if (self.model_extra or {}).get("prerelax") is not None:
            raise ValueError(
                "'prerelax' does not apply to an on-the-fly run: each MD frame is labelled as it is "
                "(a single point), never relaxed first"
            )
        return self


class _OTFFile(BaseModel, extra="forbid"):
    """The file's layout; ``committee`` is split between its own keys and the MACE settings."""

    run: RunSection
    structure: StructureSection = StructureSection()
    walkers: tuple[WalkerSpec, ...]
    committee: dict[str, Any] = {}
    otf: OTFSettings = OTFSettings()
    oracle: _OracleTable

    @field_validator("walkers")
    @classmethod
    def _distinct(cls, walkers: tuple[WalkerSpec, ...]) -> tuple[WalkerSpec, ...]:
        if not walkers:
            raise ValueError("list at least one walker ([[walkers]])")
        names = [w.name for w in walkers]
        if len(set(names)) != len(names):
            raise ValueError(f"walker names must be distinct, got {names}")
        return walkers


@dataclass(frozen=True)
class OTFConfig:
    """A whole on-the-fly run, validated."""

    run: RunSection
    structure: StructureSection
    walkers: tuple[WalkerSpec, ...]
    committee: CommitteeSection
    mace: MACESettings
    otf: OTFSettings
    oracle: Mapping[str, Any]
    base_dir: Path
    source: Mapping[str, Any]

    def resolve(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def ledger_location(self) -> str:
        return self.run.ledger if "://" in self.run.ledger else str(self.resolve(self.run.ledger))

    def start(self) -> Atoms:
        """The starting structure.

        Raises:
            ConfigError: the file cannot be read or the bulk cell cannot be built.
        """
        s = self.structure
        if s.file is not None:
            from ase.io import read

            try:
                atoms = read(self.resolve(s.file))
            except Exception as exc:  # ASE raises many kinds for unreadable files
                raise ConfigError(f"structure.file: cannot read {s.file!r}: {exc}") from exc
            assert isinstance(atoms, Atoms)
            return atoms
        from ase.build import bulk

        try:
            atoms = bulk(s.element, s.lattice, a=s.a, cubic=s.lattice in ("fcc", "bcc")).repeat(s.repeat)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"structure: cannot build {s.lattice} {s.element}: {exc}") from exc
        if not 0 <= s.vacancies < len(atoms):
            raise ConfigError(f"structure.vacancies: {s.vacancies} of a {len(atoms)}-atom cell")
        del atoms[list(range(s.vacancies))]
        if s.rattle_a:
            atoms.rattle(s.rattle_a, seed=s.seed)
        return atoms


def parse_otf_config(
    data: Mapping[str, Any], base_dir: Path = Path("."), source: str = "config"
) -> OTFConfig:
    """Validate an on-the-fly configuration given as a dictionary (the TOML's content).

    Raises:
        ConfigError: a section or key is missing, unknown or invalid; the message names the
            source and the key.
    """
    try:
        layout = validate_section(_OTFFile, data)
        own = {f.name for f in dataclasses.fields(CommitteeSection)}
        committee = CommitteeSection(**{k: v for k, v in layout.committee.items() if k in own})
        try:
            mace = _MACE_KEYS.validate_python({k: v for k, v in layout.committee.items() if k not in own})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, "committee")) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return OTFConfig(
        run=layout.run,
        structure=layout.structure,
        walkers=layout.walkers,
        committee=committee,
        mace=MACESettings(**{f.name: getattr(mace, f.name) for f in dataclasses.fields(MACESettings)}),
        otf=layout.otf,
        oracle=layout.oracle.model_dump(exclude={"type"}),
        base_dir=base_dir,
        source=dict(data),
    )


def load_otf_config(path: str | Path) -> OTFConfig:
    """Read and validate an on-the-fly TOML file.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid (the message names the key).
    """
    path = Path(path)
    return parse_otf_config(read_toml(path), path.parent.resolve(), str(path))
