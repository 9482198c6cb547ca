"""Training committee members, in worker processes that stay alive between fits.

A member trains in :func:`_train_member` (top level, so spawned workers can unpickle it): from
scratch or warm-started from its weights, on every frame weighted by its online bootstrap
(:func:`_frame_weight`). Each worker caches the graphs it built (:data:`_GRAPHS`), so a warm
fit that replays the dataset only builds the new frames' graphs. :func:`training_pool` makes
the workers.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from loop.frame import Frame
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
    _state_bytes,
)


def _frame_weight(seed: int, frame_id: str) -> int:
    """The member's Poisson(1) bootstrap weight of a frame: fixed by seed and frame id."""
    digest = hashlib.sha256(f"{seed}:{frame_id}".encode()).digest()
    return int(np.random.default_rng(int.from_bytes(digest[:8], "little")).poisson(1.0))


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
            _GRAPHS[key] = _graph(_labelled_atoms(frame), arch)
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
