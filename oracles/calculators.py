"""Calculator factory: an ASE calculator from a small, JSON-able description.

* ``emt`` — ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O roughly):
  instant, offline, the default.
* ``gpaw`` — real plane-wave DFT with GPAW: PW mode at ``ecut_ev``, PBE, k-points from a
  density (points per Å⁻¹, Γ-centred), text output in the job's folder.
* ``"package.module:Class"`` (or ``package.module.Class``) — any other ASE calculator, built
  with the given keyword arguments (VASP, Quantum ESPRESSO, ...). File-based calculators run
  in the job's folder and take their command from the environment, as ASE does
  (``ASE_VASP_COMMAND``, ``ASE_ESPRESSO_COMMAND``, ...).

:func:`check_available` runs in the oracle's process before any job (a missing code is a setup
error); :func:`make_calculator` runs inside the job's child process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase.calculators.calculator import BaseCalculator

from oracles.errors import OracleSetupError

BUILTIN = ("emt", "gpaw")


@dataclass(frozen=True)
class CalculatorSpec:
    """What calculator to build, and how.

    Args:
        name: ``"emt"``, ``"gpaw"`` or an import path ``"module:Class"``.
        kwargs: Keyword arguments for the calculator's constructor (JSON-able).
        kpoint_density: GPAW: k-points per Å⁻¹ of reciprocal length (Γ-centred).
        ecut_ev: GPAW: plane-wave cut-off (eV).
        xc: GPAW: exchange-correlation functional.
    """

    name: str = "emt"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    kpoint_density: float = 3.0
    ecut_ev: float = 350.0
    xc: str = "PBE"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kwargs": dict(self.kwargs),
            "kpoint_density": self.kpoint_density,
            "ecut_ev": self.ecut_ev,
            "xc": self.xc,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalculatorSpec:
        return cls(**dict(d))

    @property
    def key(self) -> str:
        """A short hash of the calculator's settings."""
        return settings_key(self.as_dict())


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of JSON-able settings (12 hex digits)."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_available(spec: CalculatorSpec) -> None:
    """Fail early when the calculator's code cannot be imported.

    Raises:
        OracleSetupError: the package is not installed or the class does not exist.
    """
    if spec.name == "emt":
        return
    if spec.name == "gpaw":
        if importlib.util.find_spec("gpaw") is None:
            raise OracleSetupError(
                "calculator 'gpaw' is not installed: pip install gpaw gpaw-data "
                "(needs libxc-dev libopenblas-dev libfftw3-dev and a C++ compiler)"
            )
        return
    _import_class(spec.name)


def make_calculator(spec: CalculatorSpec, directory: str | Path) -> BaseCalculator:
    """Build the calculator, writing its files into ``directory``.

    Raises:
        OracleSetupError: unknown calculator, missing code, or keyword arguments the
            calculator rejects.
    """
    directory = Path(directory)
    if spec.name == "emt":
        from ase.calculators.emt import EMT

        unknown = sorted(set(spec.kwargs) - set(EMT.default_parameters))
        if unknown:
            raise OracleSetupError(
                f"calculator 'emt' rejects its keyword arguments {unknown}; "
                f"it knows {sorted(EMT.default_parameters)}"
            )
        return _construct(EMT, dict(spec.kwargs), "emt")
    if spec.name == "gpaw":
        check_available(spec)
        from gpaw import GPAW, PW

        kwargs: dict[str, Any] = {
            "mode": PW(spec.ecut_ev),
            "xc": spec.xc,
            "kpts": {"density": spec.kpoint_density, "gamma": True},
            "txt": str(directory / "gpaw.txt"),
        }
        kwargs.update(spec.kwargs)
        return _construct(GPAW, kwargs, "gpaw")
    calculator = _construct(_import_class(spec.name), dict(spec.kwargs), spec.name)
    if hasattr(calculator, "directory"):
        calculator.directory = str(directory)
    return calculator


def _construct(cls: Callable[..., Any], kwargs: dict[str, Any], name: str) -> BaseCalculator:
    # a class or a factory: GPAW's is a function that returns its new or its legacy calculator
    try:
        calculator: BaseCalculator = cls(**kwargs)
        return calculator
    except TypeError as exc:
        raise OracleSetupError(
            f"calculator {name!r} rejects its keyword arguments {sorted(kwargs)}: {exc}"
        ) from exc


def _import_class(path: str) -> type:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise OracleSetupError(
            f"calculator {path!r} is neither one of {list(BUILTIN)} nor an import path 'module:Class'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise OracleSetupError(f"calculator {path!r}: cannot import module {module_name!r}: {exc}") from exc
    except AttributeError:
        raise OracleSetupError(f"calculator {path!r}: module {module_name!r} has no {attr!r}") from None
    if not isinstance(cls, type):
        raise OracleSetupError(f"calculator {path!r} is not a class")
    return cls
