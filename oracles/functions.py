"""Ground-truth functions for the function-backed simulated lab.

Each takes a parameter dictionary and returns property values. They are registered by
name so a campaign file can say ``function = "thin_film"``; any other function can be given
as ``"package.module:callable"``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any

from loop.errors import ConfigError

GroundTruth = Callable[[Mapping[str, Any]], dict[str, float]]


def branin(params: Mapping[str, Any]) -> dict[str, float]:
    """Branin on ``x1 ∈ [-5, 10]``, ``x2 ∈ [0, 15]``; minimum 0.397887 (three places)."""
    x1, x2 = float(params["x1"]), float(params["x2"])
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return {"y": (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10}


def branin_screen(params: Mapping[str, Any]) -> dict[str, float]:
    """A cheap screen of :func:`branin`: the same landscape, shifted and tilted (a biased lower
    fidelity; the emulator adds its noise)."""
    x1, x2 = float(params["x1"]), float(params["x2"])
    return {"y": branin(params)["y"] + 4.0 * math.sin(0.5 * x1) + 0.3 * x2 + 5.0}


def thin_film(params: Mapping[str, Any]) -> dict[str, float]:
    """A made-up but smooth thin-film conductivity experiment (S/cm), to maximise.

    Inputs: composition fractions ``x_cu``, ``x_ag``, ``x_au`` (summing to 1), annealing
    temperature ``anneal_c`` (200–600 °C), annealing time ``anneal_min`` (integer, 5–60) and
    ``atmosphere`` (``"air"``, ``"N2"``, ``"Ar"``). The best film sits near
    Cu 0.55 / Ag 0.35 / Au 0.10 annealed at 430 °C for ~30 min under Ar. Also returns the
    film's ``roughness_nm``, which rises with temperature.
    """
    cu, ag, au = (float(params[k]) for k in ("x_cu", "x_ag", "x_au"))
    temp, minutes = float(params["anneal_c"]), float(params["anneal_min"])
    composition = math.exp(-((cu - 0.55) ** 2 + (ag - 0.35) ** 2 + (au - 0.10) ** 2) / 0.05)
    mixing = 0.25 * math.exp(-((cu - 0.2) ** 2 + (ag - 0.2) ** 2 + (au - 0.6) ** 2) / 0.02)
    anneal = math.exp(-(((temp - 430.0) / 90.0) ** 2)) * (1 - math.exp(-minutes / 12.0))
    grain_growth = 1.0 - 0.004 * max(0.0, minutes - 30.0)
    atmosphere = {"air": 0.55, "N2": 0.85, "Ar": 1.0}[str(params["atmosphere"])]
    conductivity = 5.8e5 * (composition + mixing) * anneal * grain_growth * atmosphere
    roughness = 0.8 + 0.006 * temp + 0.02 * minutes
    return {"conductivity": conductivity / 1e5, "roughness_nm": roughness}


FUNCTIONS: dict[str, GroundTruth] = {"branin": branin, "branin_screen": branin_screen, "thin_film": thin_film}


def resolve_function(spec: str) -> GroundTruth:
    """A ground-truth function from a registered name or ``"module:callable"``.

    Raises:
        ConfigError: the name is unknown or the import fails.
    """
    if spec in FUNCTIONS:
        return FUNCTIONS[spec]
    if ":" not in spec:
        raise ConfigError(
            f"unknown function {spec!r}: use one of {sorted(FUNCTIONS)} or 'package.module:callable'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import function {spec!r}: {exc}") from exc
    if not callable(function):
        raise ConfigError(f"{spec!r} is not callable")
    return function
