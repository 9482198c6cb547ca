"""Plug-ins: sections whose ``type`` names a builder in another package.

A plug-in section (``[oracle] type = "robot"``, ``[space.generator] type = "structures"``)
keeps its options for the builder its registry names, which validates them when the
campaign is built; the configuration only checks that the type is known. The builder is
called as ``builder(options, context)`` with a :class:`PluginContext`: what an adapter may know
of the campaign (:class:`oracles.context.BuildContext`), and the universal potentials it
cannot load itself (:class:`oracles.context.UniversalPotentials`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from loop.errors import ConfigError

if TYPE_CHECKING:
    from ase.calculators.calculator import BaseCalculator

    from loop.config import CampaignConfig, CampaignSection
    from loop.config_space import ObjectiveConfig

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


def plugin(registry: dict[str, str], kind: str) -> Callable[..., Any]:
    """The builder registered for ``kind``: ``builder(options, context)``.

    Raises:
        ConfigError: the plug-in's module cannot be imported (an optional dependency is
            missing, say).
    """
    module_name, _, attr = registry[kind].partition(":")
    try:
        builder: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"type {kind!r} is not available: {exc}") from exc
    return builder


@dataclass(frozen=True)
class PluginContext:
    """What a plug-in builder receives: the campaign's name, objectives, folder and path
    resolution, and the universal potentials by name."""

    config: CampaignConfig

    @property
    def campaign(self) -> CampaignSection:
        return self.config.campaign

    @property
    def objectives(self) -> Sequence[ObjectiveConfig]:
        return self.config.objectives

    @property
    def base_dir(self) -> Path:
        """The campaign file's folder."""
        return self.config.base_dir

    def resolve(self, path: str | Path) -> Path:
        """A path from the campaign file, made absolute against the file's folder."""
        return self.config.resolve(path)

    def universal_calculator(self, name: str, device: str = "cpu", **options: Any) -> BaseCalculator:
        """An ASE calculator of the universal potential ``name``
        (:func:`surrogates.universal.universal_calculator`)."""
        from surrogates.universal import universal_calculator

        return universal_calculator(name, device, **options)
