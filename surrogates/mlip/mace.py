"""Building and running one MACE model (mace-torch): its architecture, graphs and weights.

mace-torch is imported on first use (:func:`_mace`); importing this module sets up torch for
e3nn (allow-listed ``slice`` objects, silenced TorchScript deprecation warnings).
"""

from __future__ import annotations

import copy
import functools
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms

from loop.frame import Frame, stress_matrix
from surrogates.mlip.settings import MACESettings

# e3nn 0.4 loads its constants with torch.load, which since torch 2.6 refuses the ``slice``
# objects inside unless they are allow-listed.
torch.serialization.add_safe_globals([slice])
# e3nn compiles its kernels with TorchScript, which torch now flags on every call; not ours to fix.
for _message in (
    "`torch.jit.save` is deprecated",
    "`torch.jit.load` is deprecated",
    "The TorchScript type system",
):
    warnings.filterwarnings("ignore", message=_message)

ENERGY, FORCES, STRESS = "energy", "forces", "stress"


@dataclass(frozen=True)
class _Architecture:
    """What fixes a member's shape: settings, elements and the data statistics at first fit."""

    settings: MACESettings
    numbers: tuple[int, ...]
    atomic_energies: tuple[float, ...]
    scale: float
    avg_num_neighbors: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "settings": self.settings.as_dict()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> _Architecture:
        return cls(
            MACESettings.from_dict(values["settings"]),
            tuple(values["numbers"]),
            tuple(values["atomic_energies"]),
            float(values["scale"]),
            float(values["avg_num_neighbors"]),
        )


def _dtype(settings: MACESettings) -> torch.dtype:
    return torch.float32 if settings.dtype == "float32" else torch.float64


@functools.cache
def _mace() -> Any:
    """Import mace once; undo its import-time switch of every ``torch.load`` in the process
    to unsafe unpickling (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``)."""
    before = os.environ.get(_UNSAFE_LOAD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e3nn's note on the switch above
        import mace.data
        import mace.modules
        import mace.tools
        import mace.tools.torch_geometric

    if before is None:
        os.environ.pop(_UNSAFE_LOAD, None)
    return mace


_UNSAFE_LOAD = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _build_model(arch: _Architecture, seed: int = 0) -> torch.nn.Module:
    """A fresh model of architecture ``arch``, its initial weights drawn from ``seed``."""
    return copy.deepcopy(_initial_model(arch, seed))


@functools.lru_cache(maxsize=32)
def _initial_model(arch: _Architecture, seed: int) -> torch.nn.Module:
    """The initial model for ``arch`` and ``seed``, cached: e3nn takes most of a second to build
    one. Its weights depend on ``seed`` alone, not on what the process drew before: a worker
    that reused the first model it built gave every later member that member's start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _new_model(arch)


def _new_model(arch: _Architecture) -> torch.nn.Module:
    from e3nn import o3

    modules = _mace().modules
    s = arch.settings
    hidden = "+".join(f"{s.channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(s.max_l + 1))
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=s.r_max,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=interaction,
        interaction_cls_first=interaction,
        num_interactions=s.interactions,
        num_elements=len(arch.numbers),
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array(arch.atomic_energies),
        avg_num_neighbors=arch.avg_num_neighbors,
        atomic_numbers=list(arch.numbers),
        correlation=s.correlation,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=arch.scale,
        atomic_inter_shift=0.0,
    )
    return model.to(_dtype(s))


def _graph(atoms: Atoms, arch: _Architecture) -> Any:
    """MACE's graph of a structure (neighbour list within ``r_max``), labels included if any."""
    data, tools = _mace().data, _mace().tools
    keys = data.KeySpecification(info_keys={ENERGY: ENERGY, STRESS: STRESS}, arrays_keys={FORCES: FORCES})
    config = data.config_from_atoms(atoms, keys)
    table = tools.AtomicNumberTable(list(arch.numbers))
    graph = data.AtomicData.from_config(config, z_table=table, cutoff=arch.settings.r_max)
    dtype = _dtype(arch.settings)
    for key in graph.keys:
        value = graph[key]
        if torch.is_tensor(value) and value.is_floating_point():
            graph[key] = value.to(dtype)
    return graph


def _batch(graphs: Sequence[Any]) -> Any:
    return _mace().tools.torch_geometric.Batch.from_data_list(list(graphs))


def _state_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _load_state(model: torch.nn.Module, state: bytes) -> torch.nn.Module:
    model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    return model


def _labelled_atoms(frame: Frame) -> Atoms:
    """The frame's structure with its labels where MACE's graphs read them: ``info['energy']``,
    ``arrays['forces']`` and ``info['stress']`` (3 x 3)."""
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    atoms.info[ENERGY] = frame.energy
    atoms.arrays[FORCES] = np.array(frame.forces)
    if frame.stress is not None:
        atoms.info[STRESS] = stress_matrix(frame.stress)
    return atoms
