"""Building an on-the-fly run from its validated configuration (the composition root of ``alloop otf``)."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop.errors import ConfigError
from loop.ledger import Ledger
from loop.otf.run import OTFRun
from loop.otf.settings import OTFConfig, RunSection
from surrogates.base import SurrogateError
from surrogates.mlip import MLIPCommittee


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
    ``None``: processes of its own). ``options`` go to :class:`OTFRun` (``on_round``,
    ``on_step``). The caller closes the committee (``run.committee.close()``) and the oracle.
    """
    from oracles.dft import oracle_from_config
    from surrogates.baseline import Baseline

    start = config.start()
    elements = sorted(set(start.get_chemical_symbols()))
    oracle = oracle_from_config(config.oracle, _OracleContext(config))
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
