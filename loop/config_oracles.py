"""``[oracle]`` and ``[[oracles]]``: what measures, at one fidelity or several.

A built-in oracle (``emulator``, ``dataset``) is validated here; a plug-in's options are
kept for its builder (:mod:`loop.plugins`). The retry keys are every oracle's and, like an
``[[oracles]]`` entry's ``task_runner``, are not part of the campaign's identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from loop.config_base import NonNegative, Strict
from loop.config_execution import TaskRunnerKind
from loop.plugins import ORACLE_PLUGINS, PluginSection


class OracleRetries(BaseModel):
    """``[oracle]`` keys of the engine-free loop: retries of an evaluation that failed with a
    retryable oracle error (never other errors), after ``retry_delay_s · retry_backoff^(n-1)``
    seconds. Not part of the campaign's identity (they may change on resume)."""

    retries: int = Field(default=0, ge=0, le=100)
    retry_delay_s: float = Field(default=0.0, ge=0)
    retry_backoff: float = Field(default=2.0, ge=1)


class OraclePluginSection(PluginSection, OracleRetries):
    """A plug-in oracle's section: its own options, and the retry keys."""


class EmulatorOracle(Strict, OracleRetries):
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


class DatasetOracle(Strict, OracleRetries):
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


class FidelitySection(Strict):
    """One ``[[oracles]]`` entry: a whole oracle section (as ``[oracle]``) with the name of the
    fidelity it measures at and what one evaluation costs there, in the campaign's cost unit."""

    fidelity: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    cost: float = Field(gt=0, allow_inf_nan=False)
    target: bool = False
    """The fidelity the campaign optimises (default: the most expensive one)."""
    task_runner: TaskRunnerKind | None = None
    """Where a Prefect flow runs this fidelity's evaluations (``flows/``): ``"thread"`` (in the
    flow process) or ``"dask"`` (the ``[execution]`` section's cluster); default: ``[execution]
    task_runner``. The engine-free loop ignores it; not part of the campaign's identity."""
    oracle: OracleSection

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        # The TOML entry is flat: the fidelity's keys and the oracle's keys side by side.
        if not isinstance(data, Mapping) or "oracle" in data:
            return data
        own = {key: data[key] for key in cls.model_fields if key != "oracle" and key in data}
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
