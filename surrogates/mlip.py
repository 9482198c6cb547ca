"""A committee of MACE interatomic potentials that knows how unsure it is.

:class:`MLIPCommittee` trains ``size`` small MACE models (mace-torch) on labelled structures
(energy, forces, stress). Members differ by seed and by an online bootstrap: each member
weighs each frame by a Poisson(1) draw fixed by the member's seed and the frame's id, so a
frame's weight never changes as the dataset grows. The first fit starts from scratch; every
later fit warm-starts from the current weights and replays the whole dataset (no full refit
unless asked). Members train in parallel worker processes that stay alive between fits; pass
an ``executor`` (:func:`training_pool`, a Dask client's executor) to share them between
committees, since starting one costs seconds (importing mace-torch, compiling its TorchScript).

The committee's spread is its uncertainty: :meth:`MLIPCommittee.predict` gives every member's
energy, forces and stress; :class:`CommitteeCalculator` is the ASE face (mean energy, forces
and stress plus ``energy_std``, per-atom ``forces_std`` and ``stress_std``), and
:class:`StructureEnsemble` the BoTorch face (an ``EnsembleModel`` over a list of structures,
so the loop's acquisition can rank structures by committee spread or predicted energy).

A pretrained potential that ships in its wheel (CHGNet) can be the starting point, as a
``baseline`` whose difference to the oracle the members learn (:mod:`surrogates.baseline`);
mace-torch's foundation models are downloaded at run time, not shipped in its wheel, so they
are not offered (see the README).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import math
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers
from botorch.models.ensemble import EnsembleModel
from torch import Tensor

from surrogates.base import SurrogateError
from surrogates.baseline import Baseline

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
class MACESettings:
    """Architecture and training of one committee member.

    The defaults are a small MACE (16 scalar channels, two interactions, body order 3) that
    trains on a CPU in about 25 ms per 30-atom frame and epoch.

    Args:
        r_max: Cut-off radius (Å).
        channels: Scalar channels of the hidden features.
        max_l: Largest angular momentum of the hidden features (0: scalars only).
        correlation: Body order of the messages minus one.
        interactions: Message-passing layers.
        dtype: ``"float32"`` (fast) or ``"float64"``.
        learning_rate: Adam's step size when training from scratch.
        warm_learning_rate: Adam's step size when warm-starting. A fresh Adam's first steps move
            every weight by about its step size, so the from-scratch rate would undo much of a
            trained model at every retraining (replaying the frames of one on-the-fly run in order,
            1e-3 instead of 5e-3 gave energy errors of 0.001-0.004 eV/atom instead of 0.012-0.040).
        batch_size: Frames per optimizer step.
        epochs: Passes over the data when training from scratch.
        warm_epochs: Passes over the whole (replayed) data when warm-starting.
        min_steps: Fewest optimizer steps of any fit (small datasets still get trained).
        energy_weight: Loss weight of the energy per atom (eV²).
        forces_weight: Loss weight of the forces (eV²/Å²).
        stress_weight: Loss weight of the stress (eV²/Å⁶); 0 skips the stress.
        bootstrap: Weigh frames per member by Poisson(1) draws (else every member sees all).
    """

    r_max: float = 4.5
    channels: int = 16
    max_l: int = 0
    correlation: int = 2
    interactions: int = 2
    dtype: str = "float32"
    learning_rate: float = 5e-3
    warm_learning_rate: float = 1e-3
    batch_size: int = 4
    epochs: int = 60
    warm_epochs: int = 2
    min_steps: int = 8
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 10.0
    bootstrap: bool = True

    def __post_init__(self) -> None:
        positive = {
            "r_max": self.r_max,
            "channels": self.channels,
            "correlation": self.correlation,
            "interactions": self.interactions,
            "learning_rate": self.learning_rate,
            "warm_learning_rate": self.warm_learning_rate,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
        }
        bad = [f"{k} = {v}" for k, v in positive.items() if not v > 0]
        bad += [
            f"{k} = {v}"
            for k, v in {"warm_epochs": self.warm_epochs, "min_steps": self.min_steps}.items()
            if v < 0
        ]
        bad += [
            f"{k} = {v}"
            for k, v in {
                "energy_weight": self.energy_weight,
                "forces_weight": self.forces_weight,
                "stress_weight": self.stress_weight,
            }.items()
            if not (math.isfinite(v) and v >= 0)
        ]
        if self.max_l not in (0, 1, 2):
            bad.append(f"max_l = {self.max_l} (0, 1 or 2)")
        if self.dtype not in ("float32", "float64"):
            bad.append(f"dtype = {self.dtype!r} ('float32' or 'float64')")
        if bad:
            raise ValueError(f"invalid MACE settings: {', '.join(bad)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MACESettings:
        return cls(**values)


@dataclass(frozen=True)
class Frame:
    """One labelled structure, in plain arrays (cheap to send to a training process).

    Args:
        id: A stable id (the ledger's candidate id, or a hash of the arrays).
        numbers: ``n`` atomic numbers.
        positions: ``n x 3`` positions (Å).
        cell: ``3 x 3`` cell (Å).
        pbc: Periodicity along the three cell vectors.
        energy: Total energy (eV).
        forces: ``n x 3`` forces (eV/Å).
        stress: Voigt stress ``xx yy zz yz xz xy`` (eV/Å³), or ``None``.
    """

    id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None

    @classmethod
    def from_atoms(
        cls,
        atoms: Atoms,
        energy: float,
        forces: np.ndarray,
        stress: np.ndarray | None = None,
        id: str | None = None,
    ) -> Frame:
        """A frame from a structure and its labels.

        Raises:
            ValueError: a label is not finite or its shape does not fit the structure.
        """
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
        if stress is not None:
            stress = np.asarray(stress, dtype=float).reshape(-1)
            if stress.shape == (9,):
                stress = stress.reshape(3, 3)[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            if stress.shape != (6,):
                raise ValueError(f"stress has shape {stress.shape}, expected 6 (Voigt) or 3 x 3")
        labels = [np.array([energy]), forces] + ([] if stress is None else [stress])
        if not all(np.isfinite(x).all() for x in labels):
            raise ValueError("a label (energy, forces or stress) is not finite")
        positions = np.array(atoms.get_positions(), dtype=float)
        if id is None:
            digest = hashlib.sha256(positions.round(6).tobytes() + np.asarray(atoms.cell).round(6).tobytes())
            id = digest.hexdigest()[:16]
        return cls(
            id,
            np.array(atoms.numbers),
            positions,
            np.array(atoms.cell, dtype=float),
            tuple(bool(p) for p in atoms.pbc),  # type: ignore[arg-type]
            float(energy),
            forces,
            stress,
        )

    def atoms(self) -> Atoms:
        """The structure, labels in ``info['energy']``, ``arrays['forces']``, ``info['stress']``."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info[ENERGY] = self.energy
        atoms.arrays[FORCES] = self.forces
        if self.stress is not None:
            atoms.info[STRESS] = _voigt_to_matrix(self.stress)
        return atoms


# --- building and running one MACE model ------------------------------------------------------


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


def _frame_weight(seed: int, frame_id: str) -> int:
    """The member's Poisson(1) bootstrap weight of a frame: fixed by seed and frame id."""
    digest = hashlib.sha256(f"{seed}:{frame_id}".encode()).digest()
    return int(np.random.default_rng(int.from_bytes(digest[:8], "little")).poisson(1.0))


# --- training, in a worker process -------------------------------------------------------------

# Per worker: (architecture key, frame key) -> graph, labels included. Keyed by content, not by
# frame id: a shared worker trains committees of several runs, whose ids may coincide.
_GRAPHS: dict[tuple[str, str], Any] = {}


def _frame_key(frame: Frame) -> str:
    arrays = [frame.numbers, frame.positions, frame.cell, np.array(frame.pbc), np.array(frame.energy)]
    arrays += [frame.forces] + ([] if frame.stress is None else [frame.stress])
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def _train_member(
    arch_values: dict[str, Any], state: bytes | None, frames: list[Frame], seed: int, epochs: int
) -> tuple[bytes, float]:
    """Train one member for ``epochs`` passes (at least ``min_steps`` steps); returns its
    weights and the last epoch's mean loss. Runs in a worker process."""
    torch.set_num_threads(1)
    arch = _Architecture.from_dict(arch_values)
    s = arch.settings
    torch.manual_seed(seed)
    model = _build_model(arch, seed)
    if state is not None:
        _load_state(model, state)
    arch_key = hashlib.sha256(repr(arch_values).encode()).hexdigest()
    graphs = []
    for frame in frames:
        key = (arch_key, _frame_key(frame))
        if key not in _GRAPHS:
            _GRAPHS[key] = _graph(frame.atoms(), arch)
        graphs.append(_GRAPHS[key])
    weights = [_frame_weight(seed, f.id) if s.bootstrap else 1 for f in frames]
    if not any(weights):  # an unlucky bootstrap of a tiny dataset: fall back to every frame
        weights = [1] * len(frames)
    weighted = [graph for graph, weight in zip(graphs, weights, strict=True) for _ in range(weight)]
    rng = np.random.default_rng(seed + 7919 * len(frames))
    batches_per_epoch = math.ceil(len(weighted) / s.batch_size)
    epochs = max(epochs, math.ceil(s.min_steps / batches_per_epoch))
    rate = s.learning_rate if state is None else s.warm_learning_rate
    optimizer = torch.optim.Adam(model.parameters(), lr=rate, amsgrad=True)
    use_stress = s.stress_weight > 0 and all(f.stress is not None for f in frames)
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(weighted))
        loss_sum = 0.0
        for start in range(0, len(order), s.batch_size):
            batch = _batch([weighted[i] for i in order[start : start + s.batch_size]])
            optimizer.zero_grad()
            out = model(batch.to_dict(), training=True, compute_force=True, compute_stress=use_stress)
            n_atoms = batch.ptr[1:] - batch.ptr[:-1]
            loss = s.energy_weight * (((out[ENERGY] - batch.energy) / n_atoms) ** 2).mean()
            loss = loss + s.forces_weight * ((out[FORCES] - batch.forces) ** 2).mean()
            if use_stress:
                loss = loss + s.stress_weight * ((out[STRESS] - batch.stress) ** 2).mean()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
        loss_sum /= batches_per_epoch
    return _state_bytes(model), loss_sum


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end the worker when the process that started it dies (a killed
    run leaves no one to shut the pool down, and idle workers hold half a GB each)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def training_pool(workers: int = 2) -> ProcessPoolExecutor:
    """Worker processes to train committee members in: spawned (torch and fork do not mix),
    and ending with the process that made them. Committees given the same pool share its
    warm workers.

    Raises:
        ValueError: ``workers`` is below 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


# --- the committee -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitteePrediction:
    """Every member's prediction for one structure.

    Args:
        energy: ``s`` total energies (eV).
        forces: ``s x n x 3`` forces (eV/Å).
        stress: ``s x 6`` Voigt stresses (eV/Å³).
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray

    @property
    def forces_std(self) -> np.ndarray:
        """``n``: per atom, the root-mean-square deviation of the members' force vectors
        from their mean (eV/Å)."""
        deviation = self.forces - self.forces.mean(axis=0)
        return np.sqrt((deviation**2).sum(axis=-1).mean(axis=0))

    @property
    def uncertainty(self) -> float:
        """How unsure the committee is of the frame: the root mean square over atoms of
        ``forces_std`` (eV/Å), on the same footing as :func:`force_error`."""
        return float(np.sqrt(np.mean(self.forces_std**2)))


def force_error(predicted: np.ndarray, true: np.ndarray) -> float:
    """The force error of a frame: root mean square over atoms of the error vectors' norms
    (eV/Å), i.e. ``sqrt(3)`` times the RMSE over force components."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(predicted) - np.asarray(true)) ** 2, axis=-1))))


@dataclass
class MLIPCommittee:
    """A committee of MACE potentials; see the module docstring.

    Args:
        elements: Chemical symbols the potentials cover.
        settings: Architecture and training of each member.
        size: Number of members (at least 2: the spread needs two).
        seed: Members use seeds ``seed, seed + 1, ...``.
        workers: Training processes (members train in parallel; at most ``size``), started
            on the first fit and stopped by :meth:`close`; unused with ``executor``.
        baseline: A pretrained potential the members correct (:mod:`surrogates.baseline`);
            ``None`` trains them from scratch.
        executor: Where members train instead: a shared :func:`training_pool` or any
            ``concurrent.futures.Executor`` whose workers can import this module (a Dask
            client's ``get_executor()``). Its owner shuts it down, not :meth:`close`.
    """

    elements: Sequence[str]
    settings: MACESettings = field(default_factory=MACESettings)
    size: int = 4
    seed: int = 0
    workers: int = 2
    baseline: Baseline | None = None
    executor: Executor | None = field(default=None, repr=False, compare=False)
    _arch: _Architecture | None = field(default=None, init=False, repr=False)
    _states: list[bytes] = field(default_factory=list, init=False, repr=False)
    _models: list[torch.nn.Module] = field(default_factory=list, init=False, repr=False)
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)
    fits: int = field(default=0, init=False)
    last_losses: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"a committee needs at least 2 members, got size = {self.size}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        unknown = [e for e in self.elements if e not in atomic_numbers]
        if unknown or not self.elements:
            raise ValueError(f"elements must be chemical symbols, got {list(self.elements)}")
        self.elements = sorted(set(self.elements), key=lambda e: atomic_numbers[e])

    # --- fitting ------------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return bool(self._models)

    def fit(self, frames: Sequence[Frame], from_scratch: bool = False) -> MLIPCommittee:
        """Train every member on ``frames``, in parallel processes.

        The first fit (or ``from_scratch``) fixes the architecture from the data (elemental
        reference energies by least squares, force scale, mean neighbour count) and trains
        ``epochs`` passes; later fits warm-start and replay all frames ``warm_epochs`` times.

        Raises:
            SurrogateError: no frames, or a frame has an element the committee does not cover.
        """
        if not frames:
            raise SurrogateError("cannot fit an MLIP committee without labelled frames")
        numbers = {atomic_numbers[e] for e in self.elements}
        stray = sorted({int(z) for f in frames for z in f.numbers} - numbers)
        if stray:
            raise SurrogateError(
                f"frames contain atomic numbers {stray} outside the committee's {self.elements}"
            )
        if self.baseline is not None:
            frames = [self.baseline.residual(f) for f in frames]
        scratch = from_scratch or self._arch is None
        if scratch:
            self._arch = self._architecture(frames)
            self._states = []
        assert self._arch is not None
        epochs = self.settings.epochs if scratch else self.settings.warm_epochs
        pool = self._executor()
        jobs = [
            pool.submit(
                _train_member,
                self._arch.as_dict(),
                None if scratch else self._states[m],
                list(frames),
                self.seed + m,
                epochs,
            )
            for m in range(self.size)
        ]
        outcomes = [job.result() for job in jobs]
        self._states = [state for state, _ in outcomes]
        self.last_losses = [loss for _, loss in outcomes]
        self._models = [self._model(state) for state in self._states]
        self.fits += 1
        return self

    def _architecture(self, frames: Sequence[Frame]) -> _Architecture:
        numbers = tuple(atomic_numbers[e] for e in self.elements)
        counts = np.array([[np.sum(f.numbers == z) for z in numbers] for f in frames], dtype=float)
        energies = np.array([f.energy for f in frames])
        references, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        forces = np.concatenate([f.forces.reshape(-1) for f in frames])
        scale = float(np.sqrt(np.mean(forces**2))) or 1.0
        probe = _Architecture(self.settings, numbers, tuple(float(e) for e in references), scale, 1.0)
        neighbours = [
            torch.unique(_graph(f.atoms(), probe).edge_index[1], return_counts=True)[1].double().mean()
            for f in frames[:20]
        ]
        return replace(probe, avg_num_neighbors=float(torch.stack(neighbours).mean()))

    def _executor(self) -> Executor:
        if self.executor is not None:
            return self.executor
        if self._pool is None:
            self._pool = training_pool(min(self.workers, self.size))
        return self._pool

    def _model(self, state: bytes) -> torch.nn.Module:
        assert self._arch is not None
        model = _load_state(_build_model(self._arch), state)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def close(self) -> None:
        """Stop the training processes this committee started (not an ``executor`` it was
        given). Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # --- predicting ---------------------------------------------------------------------------

    def predict(self, atoms: Atoms) -> CommitteePrediction:
        """Every member's energy, forces and stress for ``atoms``.

        Raises:
            SurrogateError: the committee is not fitted, or ``atoms`` has an element it lacks.
        """
        if not self._models or self._arch is None:
            raise SurrogateError("the MLIP committee is not fitted yet")
        known = set(self._arch.numbers)
        stray = sorted({int(z) for z in atoms.numbers} - known)
        if stray:
            raise SurrogateError(f"structure has atomic numbers {stray} the committee was not trained on")
        batch = _batch([_graph(atoms, self._arch)]).to_dict()
        periodic = bool(np.all(atoms.pbc))
        energies, forces, stresses = [], [], []
        for model in self._models:
            out = model(dict(batch), training=False, compute_force=True, compute_stress=periodic)
            energies.append(float(out[ENERGY].detach()[0]))
            forces.append(out[FORCES].detach().double().numpy())
            stress = out[STRESS].detach()[0].double().numpy() if periodic else np.zeros((3, 3))
            stresses.append(stress.reshape(3, 3)[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
        prediction = CommitteePrediction(np.array(energies), np.stack(forces), np.stack(stresses))
        if self.baseline is None:
            return prediction
        energy, force, stress = self.baseline.predict(atoms)
        return CommitteePrediction(
            prediction.energy + energy, prediction.forces + force, prediction.stress + stress
        )

    def calculator(self) -> CommitteeCalculator:
        """An ASE calculator backed by this committee (follows later fits)."""
        return CommitteeCalculator(self)

    # --- checkpoints --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the architecture and every member's weights to ``path`` (atomically)."""
        if self._arch is None:
            raise SurrogateError("nothing to save: the MLIP committee is not fitted yet")
        path = Path(path)
        payload = {
            "architecture": self._arch.as_dict(),
            "states": list(self._states),
            "elements": list(self.elements),
            "size": self.size,
            "seed": self.seed,
            "fits": self.fits,
            "baseline": None if self.baseline is None else self.baseline.name,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    def load(self, path: str | Path) -> MLIPCommittee:
        """Restore the weights :meth:`save` wrote.

        Raises:
            SurrogateError: the file was written by a committee of another size or elements.
        """
        payload = torch.load(Path(path), weights_only=True)
        baseline = None if self.baseline is None else self.baseline.name
        if payload.get("baseline") != baseline:
            raise SurrogateError(
                f"checkpoint {path} was trained on baseline {payload.get('baseline')!r}, not {baseline!r}"
            )
        if payload["size"] != self.size or list(payload["elements"]) != list(self.elements):
            raise SurrogateError(
                f"checkpoint {path} holds a committee of {payload['size']} over {payload['elements']}, "
                f"not {self.size} over {list(self.elements)}"
            )
        self._arch = _Architecture.from_dict(payload["architecture"])
        self._states = list(payload["states"])
        self._models = [self._model(state) for state in self._states]
        self.fits = int(payload["fits"])
        return self

    def __enter__(self) -> MLIPCommittee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _voigt_to_matrix(stress: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


# --- the ASE face ------------------------------------------------------------------------------


class CommitteeCalculator(Calculator):
    """ASE calculator: the committee's mean energy, forces and stress, and their spread.

    ``energy_std`` (eV) and ``stress_std`` (Voigt, eV/Å³) are the members' standard
    deviations; ``forces_std`` (``n``, eV/Å) is per atom, see
    :attr:`CommitteePrediction.forces_std`. ``results['committee']`` keeps the members'
    predictions.
    """

    implemented_properties: ClassVar[list[str]] = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energy_std",
        "forces_std",
        "stress_std",
    ]

    def __init__(self, committee: MLIPCommittee, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        prediction = self.committee.predict(self.atoms)
        energy = float(prediction.energy.mean())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": prediction.forces.mean(axis=0),
            "stress": prediction.stress.mean(axis=0),
            "energy_std": float(prediction.energy.std()),
            "forces_std": prediction.forces_std,
            "stress_std": prediction.stress.std(axis=0),
            "committee": prediction,
        }


# --- the BoTorch face --------------------------------------------------------------------------


class StructureEnsemble(EnsembleModel):
    """A BoTorch ``EnsembleModel`` over a fixed list of structures.

    Inputs are ``batch x q x 1`` structure indices into ``structures``; outputs are the
    members' energies per atom (eV/atom), ``batch x s x q x 1``. Every BoTorch acquisition
    works on it (its posterior is an ``EnsemblePosterior``); ``posterior(X).variance`` is the
    committee's spread, ``mean`` the predicted energy.

    Args:
        committee: A fitted committee.
        structures: The structures indices refer to.
    """

    def __init__(self, committee: MLIPCommittee, structures: Sequence[Atoms]) -> None:
        super().__init__()
        if not committee.fitted:
            raise SurrogateError("the MLIP committee is not fitted yet")
        self.committee = committee
        self.structures = list(structures)
        self._num_outputs = 1
        self._cache: dict[int, Tensor] = {}

    def member_energies(self, index: int) -> Tensor:
        """``s``: every member's energy per atom of structure ``index`` (cached)."""
        if index not in self._cache:
            atoms = self.structures[index]
            energies = self.committee.predict(atoms).energy / len(atoms)
            self._cache[index] = torch.as_tensor(energies, dtype=torch.float64)
        return self._cache[index]

    def forward(self, X: Tensor) -> Tensor:
        """``batch x q x 1`` indices → ``batch x s x q x 1`` energies per atom (eV/atom).

        Raises:
            SurrogateError: an index is not an integer in ``[0, len(structures))``.
        """
        indices = X[..., 0]
        if (
            not torch.equal(indices, indices.round())
            or indices.min() < 0
            or indices.max() >= len(self.structures)
        ):
            raise SurrogateError(f"inputs must be structure indices in [0, {len(self.structures)})")
        flat = torch.stack([self.member_energies(int(i)) for i in indices.reshape(-1).tolist()])
        values = flat.reshape(*indices.shape, -1).to(X)  # batch x q x s
        return values.movedim(-1, -2).unsqueeze(-1)
