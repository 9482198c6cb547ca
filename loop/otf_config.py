"""The on-the-fly MD configuration file, and building a run from it.

One TOML file describes a run::

    [run]        name, ledger, workdir
    [structure]  the starting cell: a file ASE reads, or element/lattice/a/repeat/vacancies
    [[walkers]]  WalkerSpec fields: name, steps, temperature_k = [start, end], thermostat...
    [committee]  size, seed, workers, and MACESettings fields (channels, r_max, epochs...)
    [otf]        OTFSettings fields: tolerance_ev_per_a, target_miss_rate, stop_after_calls...
    [oracle]     the DFT runner's options (calculator = "emt" | "gpaw" | "module:Class"...),
                 always single points

Every key is checked: an unknown key, a wrong type or an out-of-range value is a
:class:`~loop.errors.ConfigError` naming it, before anything runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ase import Atoms
from pydantic import TypeAdapter, ValidationError

from loop.config import read_toml
from loop.errors import ConfigError, describe_validation_error
from loop.ledger import Ledger
from loop.otf import OTFRun, OTFSettings, WalkerSpec
from surrogates.base import SurrogateError
from surrogates.mlip import MACESettings, MLIPCommittee

T = TypeVar("T")


@dataclass(frozen=True)
class RunSection:
    """``[run]``: the campaign name, its ledger (file or URL) and the run folder."""

    name: str
    ledger: str = "otf.db"
    workdir: str = "runs"


@dataclass(frozen=True)
class StructureSection:
    """``[structure]``: ``file`` (anything ASE reads), or a bulk cell built by ASE."""

    file: str | None = None
    element: str = "Cu"
    lattice: str = "fcc"
    a: float | None = None
    repeat: tuple[int, int, int] = (2, 2, 2)
    vacancies: int = 0
    rattle_a: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class CommitteeSection:
    """``[committee]``: size, seed, training processes, an optional pretrained ``baseline``
    (``"chgnet"`` or ``"module:Class"``, see :mod:`surrogates.baseline`); the rest are
    :class:`MACESettings`."""

    size: int = 4
    seed: int = 0
    workers: int = 2
    baseline: str | None = None


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


def _section(cls: type[T], values: Any, name: str) -> T:
    """Validate a TOML table into dataclass ``cls``; errors name ``<name>.<key>``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: expected a table, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return TypeAdapter(cls).validate_python(dict(values))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, name)) from None
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def parse_otf_config(
    data: Mapping[str, Any], base_dir: Path = Path("."), source: str = "config"
) -> OTFConfig:
    """Validate an on-the-fly configuration given as a dictionary (the TOML's content).

    Raises:
        ConfigError: a section or key is missing, unknown or invalid; the message names it.
    """
    sections = {"run", "structure", "walkers", "committee", "otf", "oracle"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted(sections)}")
    for required in ("run", "walkers", "oracle"):
        if required not in data:
            raise ConfigError(f"{source}: missing section [{required}]")
    walkers = data["walkers"]
    if not isinstance(walkers, list) or not walkers:
        raise ConfigError(f"{source}: [[walkers]] must list at least one walker")
    committee = dict(data.get("committee", {}))
    own = {f.name for f in dataclasses.fields(CommitteeSection)}
    oracle = dict(data["oracle"])
    if oracle.pop("type", "dft") != "dft":
        raise ConfigError(f"{source}: oracle.type must be 'dft' (the DFT runner labels the frames)")
    if oracle.setdefault("mode", "single_point") != "single_point":
        raise ConfigError(f"{source}: oracle.mode must be 'single_point' for on-the-fly labelling")
    config = OTFConfig(
        run=_section(RunSection, data["run"], "run"),
        structure=_section(StructureSection, data.get("structure", {}), "structure"),
        walkers=tuple(_section(WalkerSpec, w, f"walkers[{i}]") for i, w in enumerate(walkers)),
        committee=_section(CommitteeSection, {k: v for k, v in committee.items() if k in own}, "committee"),
        mace=_section(MACESettings, {k: v for k, v in committee.items() if k not in own}, "committee"),
        otf=_section(OTFSettings, data.get("otf", {}), "otf"),
        oracle=oracle,
        base_dir=base_dir,
        source=dict(data),
    )
    names = [w.name for w in config.walkers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: walker names must be distinct, got {names}")
    return config


def load_otf_config(path: str | Path) -> OTFConfig:
    """Read and validate an on-the-fly TOML file.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid (the message names the key).
    """
    path = Path(path)
    return parse_otf_config(read_toml(path), path.parent.resolve(), str(path))


@dataclass(frozen=True)
class _OracleContext:
    """What the DFT runner's config builder reads: the campaign name and path resolution."""

    config: OTFConfig

    @property
    def campaign(self) -> RunSection:
        return self.config.run

    def resolve(self, path: str | Path) -> Path:
        return self.config.resolve(path)


def build_otf_run(
    config: OTFConfig, ledger: Ledger, executor: Executor | None = None, **options: Any
) -> OTFRun:
    """The run a configuration describes, on an open ``ledger``.

    ``executor`` is where the committee trains (see :class:`~surrogates.mlip.MLIPCommittee`;
    ``None``: processes of its own). ``options`` go to :class:`OTFRun` (``on_round``). The
    caller closes the committee (``run.committee.close()``) and the oracle.
    """
    from oracles.dft import oracle_from_config

    start = config.start()
    elements = sorted(set(start.get_chemical_symbols()))
    oracle = oracle_from_config(config.oracle, _OracleContext(config))
    from surrogates.baseline import Baseline

    section = config.committee
    try:
        baseline = None if section.baseline is None else Baseline(section.baseline)
    except SurrogateError as exc:
        raise ConfigError(f"committee.baseline: {exc}") from exc
    committee = MLIPCommittee(
        elements,
        config.mace,
        size=section.size,
        seed=section.seed,
        workers=section.workers,
        baseline=baseline,
        executor=executor,
    )
    identity = {k: v for k, v in config.source.items() if k != "run"} | {"name": config.run.name}
    return OTFRun(
        config.run.name,
        start,
        config.walkers,
        committee,
        oracle,
        ledger,
        config.resolve(config.run.workdir) / config.run.name,
        config.otf,
        config=identity,
        **options,
    )
