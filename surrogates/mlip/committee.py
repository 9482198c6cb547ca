"""The committee: ``size`` MACE models that train on labelled frames and predict with a spread.

The first fit fixes the architecture from the data and trains from scratch; every later fit
warm-starts from the current weights and replays the whole dataset (no full refit unless
asked). Members train in worker processes (:mod:`surrogates.mlip.training`); checkpoints hold
the architecture and every member's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers

from loop.frame import Frame, stress_voigt
from surrogates.base import SurrogateError
from surrogates.baseline import Baseline
from surrogates.mlip.calculator import CommitteeCalculator
from surrogates.mlip.mace import (
    ENERGY,
    FORCES,
    STRESS,
    _Architecture,
    _batch,
    _build_model,
    _graph,
    _labelled_atoms,
    _load_state,
)
from surrogates.mlip.prediction import CommitteePrediction
from surrogates.mlip.settings import MACESettings
from surrogates.mlip.training import _train_member, training_pool


@dataclass
class MLIPCommittee:
    """A committee of MACE potentials; see :mod:`surrogates.mlip`.

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
            torch.unique(_graph(_labelled_atoms(f), probe).edge_index[1], return_counts=True)[1]
            .double()
            .mean()
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
        return self.predict_many([atoms])[0]

    def predict_many(self, structures: Sequence[Atoms], chunk_size: int = 256) -> list[CommitteePrediction]:
        """:meth:`predict` for many structures, ``chunk_size`` of them per model call.

        One call of a member over a batch of graphs costs little more than over one small
        structure, so screening thousands of candidates goes through here (and through
        :meth:`mean_forces_many` and :meth:`energies_many`, which skip what they do not need).

        Raises:
            SurrogateError: the committee is not fitted, or a structure has an element it lacks.
        """
        predictions = []
        for atoms, (energy, forces, stress) in zip(
            structures, self._evaluate(structures, chunk_size, forces=True, stress=True), strict=True
        ):
            assert forces is not None
            if self.baseline is not None:
                base_energy, base_forces, base_stress = self.baseline.predict(atoms)
                energy, forces, stress = energy + base_energy, forces + base_forces, stress + base_stress
            predictions.append(CommitteePrediction(energy, forces, stress))
        return predictions

    def mean_forces_many(self, structures: Sequence[Atoms], chunk_size: int = 256) -> list[np.ndarray]:
        """The members' mean forces (``n x 3``, eV/Å) on each structure, without stresses: what
        relaxing positions needs (the committee calculator's forces)."""
        out = []
        for atoms, (_, forces, _) in zip(
            structures, self._evaluate(structures, chunk_size, forces=True, stress=False), strict=True
        ):
            assert forces is not None
            mean = forces.mean(axis=0)
            out.append(mean if self.baseline is None else mean + self.baseline.predict(atoms)[1])
        return out

    def energies_many(self, structures: Sequence[Atoms], chunk_size: int = 256) -> np.ndarray:
        """``len(structures) x s``: every member's total energy (eV) of each structure, without
        forces or stresses: what scoring a relaxed candidate needs."""
        rows = []
        for atoms, (energy, _, _) in zip(
            structures, self._evaluate(structures, chunk_size, forces=False, stress=False), strict=True
        ):
            rows.append(energy if self.baseline is None else energy + self.baseline.predict(atoms)[0])
        return np.array(rows).reshape(len(structures), self.size)

    def _evaluate(
        self, structures: Sequence[Atoms], chunk_size: int, forces: bool, stress: bool
    ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Per structure, the members' energies (``s``), forces (``s x n x 3``) and Voigt
        stresses (``s x 6``; zero for a structure that is not periodic), as asked.

        Raises:
            SurrogateError: the committee is not fitted, or a structure has an element it lacks.
        """
        if not self._models or self._arch is None:
            raise SurrogateError("the MLIP committee is not fitted yet")
        known = set(self._arch.numbers)
        stray = sorted({int(z) for atoms in structures for z in atoms.numbers} - known)
        if stray:
            raise SurrogateError(f"structure has atomic numbers {stray} the committee was not trained on")
        out: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = []
        for first in range(0, len(structures), chunk_size):
            out += self._evaluate_chunk(structures[first : first + chunk_size], forces, stress)
        return out

    def _evaluate_chunk(
        self, structures: Sequence[Atoms], forces: bool, stress: bool
    ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Every member over one batch of graphs, split back into structures."""
        assert self._arch is not None  # _evaluate checked
        batch = _batch([_graph(atoms, self._arch) for atoms in structures])
        bounds = batch.ptr.tolist()  # atom ranges of the structures in the batch
        periodic = np.array([bool(np.all(atoms.pbc)) for atoms in structures])
        stress = stress and bool(periodic.any())
        energies, member_forces, stresses = [], [], []
        for model in self._models:
            with torch.set_grad_enabled(
                forces or stress
            ):  # forces are gradients, also when a caller disabled them
                out = model(
                    dict(batch.to_dict()), training=False, compute_force=forces, compute_stress=stress
                )
            energies.append(out[ENERGY].detach().double().numpy())
            if forces:
                member_forces.append(out[FORCES].detach().double().numpy())
            if stress:
                voigt = np.stack([stress_voigt(m) for m in out[STRESS].detach().double().numpy()])
                stresses.append(np.where(periodic[:, None], voigt, 0.0))
        energy = np.stack(energies)
        force = np.stack(member_forces) if forces else None
        voigt = np.stack(stresses) if stress else np.zeros((len(self._models), len(structures), 6))
        return [
            (
                energy[:, k],
                None if force is None else force[:, bounds[k] : bounds[k + 1]],
                voigt[:, k],
            )
            for k in range(len(structures))
        ]

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
