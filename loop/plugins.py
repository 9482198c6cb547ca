"""Plug-ins: sections whose ``type`` names a builder in another package.

A plug-in section (``[oracle] type = "robot"``, ``[space.generator] type = "structures"``)
keeps its options for the builder its registry names, which validates them when the
campaign is built; the configuration only checks that the type is known.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

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
