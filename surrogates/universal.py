"""Universal machine-learned potentials, chosen by name: ASE calculators and descriptors.

Pretrained on the Materials Project and beyond, these models pre-relax and rank candidate
structures before anything costly runs. Each comes from its own package:

* ``"chgnet"``: CHGNet, whose weights ship inside its wheel, so it loads offline.
* ``"mace-mp"``: mace-torch's MACE-MP foundation models, downloaded at first use into
  mace's cache (``$XDG_CACHE_HOME/mace``, default ``~/.cache/mace``).
* ``"sevennet"``, ``"mattersim"``, ``"orb"``: through their packages, which fetch their own
  weights where they are not shipped.

Whatever is missing (the package, or the weights and the means to download them) is
reported as one :class:`~surrogates.base.UniversalModelUnavailable` naming the model and
what to do, never as a network library's traceback. With ``HF_HUB_OFFLINE=1`` nothing is
downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from surrogates.base import UniversalModelUnavailable

#: Seconds a weight download may wait on the network before it counts as unavailable.
DOWNLOAD_TIMEOUT_S = 20.0
_MACE_MP_DEFAULT = "medium-mpa-0"


@dataclass(frozen=True)
class _Model:
    """How to build one universal model: its package (import and pip names) and loaders."""

    package: str
    pip: str
    calculator: Callable[..., BaseCalculator]
    embedding: Callable[[Sequence[Atoms], str], np.ndarray] | None = None
    energies: Callable[[Sequence[Atoms], str], np.ndarray] | None = None
    """Batched single points, where the package offers them (else the calculator, one by one)."""


def universal_calculator(name: str, device: str = "cpu", **options: Any) -> BaseCalculator:
    """An ASE calculator of the universal potential ``name``.

    Args:
        name: One of :data:`KNOWN_MODELS` (``"chgnet"``, ``"mace-mp"``, ...).
        device: ``"cpu"`` or ``"cuda"``.
        **options: Passed to the model's loader (e.g. ``model="small"`` for mace-mp,
            ``model="0.2.0"`` for CHGNet).

    Raises:
        UniversalModelUnavailable: ``name`` is unknown, its package is not installed, or its
            weights are absent and cannot be downloaded.
    """
    return _installed(_spec(name), name).calculator(device, **options)


def structure_embedding(name: str, atoms_list: Sequence[Atoms], device: str = "cpu") -> np.ndarray:
    """A per-structure descriptor from the universal model ``name``, e.g. for a GP.

    CHGNet: its crystal feature (atom features of the last layer, averaged over the
    structure); MACE-MP: its invariant node descriptors of every layer, averaged likewise.
    Deterministic: the models run in evaluation mode.

    Returns:
        ``n x k`` array, one row per structure (``k`` = 64 for CHGNet 0.3.0).

    Raises:
        UniversalModelUnavailable: as :func:`universal_calculator`, or the model offers no
            embedding.
    """
    spec = _spec(name)
    if spec.embedding is None:
        offered = sorted(n for n, s in KNOWN_MODELS.items() if s.embedding is not None)
        raise UniversalModelUnavailable(
            f"universal model {name!r} offers no embedding; models that do: {offered}"
        )
    if not atoms_list:
        raise ValueError("structure_embedding needs at least one structure")
    _installed(spec, name)
    return spec.embedding(atoms_list, device)


def single_point_energies(name: str, atoms_list: Sequence[Atoms], device: str = "cpu") -> np.ndarray:
    """Energy per atom of each structure at its geometry as given (no relaxation): a cheap,
    approximate label, e.g. the screening fidelity of a multi-fidelity search.

    Returns:
        ``n`` energies (eV/atom).

    Raises:
        UniversalModelUnavailable: as :func:`universal_calculator`.
    """
    spec = _installed(_spec(name), name)
    if not atoms_list:
        return np.zeros(0)
    if spec.energies is not None:
        return spec.energies(atoms_list, device)
    calculator = spec.calculator(device)
    energies = []
    for atoms in atoms_list:
        copy = atoms.copy()
        copy.calc = calculator
        energies.append(float(copy.get_potential_energy()) / len(copy))
    return np.asarray(energies)


def _spec(name: str) -> _Model:
    if name not in KNOWN_MODELS:
        raise UniversalModelUnavailable(f"unknown universal model {name!r}; known: {sorted(KNOWN_MODELS)}")
    return KNOWN_MODELS[name]


def _installed(spec: _Model, name: str) -> _Model:
    if importlib.util.find_spec(spec.package) is None:
        raise UniversalModelUnavailable(
            f"universal model {name!r} needs the package {spec.pip!r}, which is not installed: "
            f"pip install {spec.pip}"
        )
    return spec


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def _unavailable_on_failure(name: str, what: str) -> Iterator[None]:
    """Turn a loader's failure (network, missing file) into one clear error, without its traceback."""
    try:
        yield
    except UniversalModelUnavailable:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UniversalModelUnavailable(f"universal model {name!r}: {what} ({reason})") from None


# --- CHGNet ---------------------------------------------------------------------------------


@functools.cache
def _chgnet_model(device: str, model: str) -> Any:
    from chgnet.model import CHGNet

    with _unavailable_on_failure("chgnet", f"weights {model!r} could not be loaded from the chgnet wheel"):
        return CHGNet.load(model_name=model, use_device=device, verbose=False)


def _chgnet(device: str, model: str = "0.3.0", **options: Any) -> BaseCalculator:
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(None):  # it prints the device it runs on
        return CHGNetCalculator(_chgnet_model(device, model), use_device=device, **options)


def _chgnet_predict(atoms_list: Sequence[Atoms], device: str, **options: Any) -> list[dict[str, Any]]:
    """CHGNet 0.3.0's energy-only predictions (eV/atom), 64 structures per batch."""
    from pymatgen.io.ase import AseAtomsAdaptor

    structures = [AseAtomsAdaptor.get_structure(atoms) for atoms in atoms_list]
    predictions = _chgnet_model(device, "0.3.0").predict_structure(
        structures, task="e", batch_size=64, **options
    )
    return [predictions] if isinstance(predictions, dict) else list(predictions)


def _chgnet_embedding(atoms_list: Sequence[Atoms], device: str) -> np.ndarray:
    predictions = _chgnet_predict(atoms_list, device, return_crystal_feas=True)
    return np.stack([np.asarray(p["crystal_fea"], dtype=float) for p in predictions])


def _chgnet_energies(atoms_list: Sequence[Atoms], device: str) -> np.ndarray:
    return np.array([float(np.asarray(p["e"]).reshape(())) for p in _chgnet_predict(atoms_list, device)])


# --- MACE-MP --------------------------------------------------------------------------------


def _mace_mp_weights(model: str) -> Path:
    """Where mace-torch keeps the checkpoint of ``model`` (a name of ``mace_mp_urls`` or a
    URL); downloaded there first if absent and downloading is allowed."""
    from mace.calculators import foundations_models as fm

    if model == _MACE_MP_DEFAULT and os.path.isfile(fm.local_model_path):
        return Path(fm.local_model_path)
    url = fm.mace_mp_urls.get(model, model)
    if not url.startswith(("https:", "http:")):
        raise UniversalModelUnavailable(
            f"unknown MACE-MP model {model!r}; known: {sorted(fm.mace_mp_urls)}, a URL or a local file"
        )
    stem = "".join(c for c in os.path.basename(url) if c.isalnum() or c == "_")
    path = Path(fm.get_cache_dir()) / stem
    if path.is_file():
        return path
    if _offline():
        raise UniversalModelUnavailable(
            f"universal model 'mace-mp': weights {model!r} are not at {path} and HF_HUB_OFFLINE is set, "
            f"so they are not downloaded from {url}"
        )
    what = f"weights {model!r} are not at {path} and could not be downloaded from {url}"
    with _unavailable_on_failure("mace-mp", what):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, partial.open("wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        partial.replace(path)
    return path


def _mace_mp(
    device: str, model: str = _MACE_MP_DEFAULT, default_dtype: str = "float64", **options: Any
) -> BaseCalculator:
    from mace.calculators import mace_mp

    path = Path(model) if Path(model).is_file() else _mace_mp_weights(model)
    with contextlib.redirect_stdout(None):  # mace prints which model and dtype it uses
        return mace_mp(model=str(path), device=device, default_dtype=default_dtype, **options)


@functools.cache
def _mace_mp_default(device: str) -> Any:
    return _mace_mp(device)


def _mace_mp_embedding(atoms_list: Sequence[Atoms], device: str) -> np.ndarray:
    calculator = _mace_mp_default(device)
    return np.stack(
        [calculator.get_descriptors(atoms, invariants_only=True).mean(axis=0) for atoms in atoms_list]
    )


# --- packages that fetch their own weights --------------------------------------------------


def _sevennet(device: str, model: str = "7net-0", **options: Any) -> BaseCalculator:
    from sevenn.calculator import SevenNetCalculator

    with _unavailable_on_failure("sevennet", f"weights {model!r} are absent and could not be fetched"):
        return SevenNetCalculator(model=model, device=device, **options)


def _mattersim(device: str, model: str = "MatterSim-v1.0.0-1M.pth", **options: Any) -> BaseCalculator:
    from mattersim.forcefield import MatterSimCalculator

    with _unavailable_on_failure("mattersim", f"weights {model!r} are absent and could not be fetched"):
        return MatterSimCalculator(load_path=model, device=device, **options)


def _orb(device: str, model: str = "orb_v3_conservative_inf_omat", **options: Any) -> BaseCalculator:
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.calculator import ORBCalculator

    loader = getattr(pretrained, model.replace("-", "_"), None)
    if loader is None:
        raise UniversalModelUnavailable(
            f"universal model 'orb': orb_models has no pretrained model {model!r}"
        )
    with _unavailable_on_failure("orb", f"weights {model!r} are absent and could not be fetched"):
        return ORBCalculator(loader(device=device), device=device, **options)


#: The universal potentials known by name.
KNOWN_MODELS: dict[str, _Model] = {
    "chgnet": _Model("chgnet", "chgnet", _chgnet, _chgnet_embedding, _chgnet_energies),
    "mace-mp": _Model("mace", "mace-torch", _mace_mp, _mace_mp_embedding),
    "sevennet": _Model("sevenn", "sevenn", _sevennet),
    "mattersim": _Model("mattersim", "mattersim", _mattersim),
    "orb": _Model("orb_models", "orb-models", _orb),
}
