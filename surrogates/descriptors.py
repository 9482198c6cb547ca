"""Learned descriptors: a universal model's per-structure embedding as a GP's inputs.

``[surrogate] descriptors = "chgnet"`` replaces the hand-made pair features of a structure pool
with what a universal potential pretrained on the Materials Project sees of each structure
(:func:`surrogates.universal.structure_embedding`). An embedding costs a forward pass of the
model, so each structure's row is computed once and kept: in memory, and in an ``.npz`` file
(beside the pool's cache) that later runs read back. Given the chemical system, the rows start
with the atomic fractions ``x_<element>`` (computed, not cached): an averaged embedding blurs
the exact composition, and the hull-aware acquisitions read the hull's coordinates there.

``descriptors = "pairs+chgnet"`` puts pair features and the embedding side by side
(:class:`StackedFeaturizer`); ``prior = "chgnet"`` appends the universal potential's formation
energy of each candidate, which the GP takes as its prior mean (:class:`PriorEnergyColumn`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from pymatgen.core import Structure

from loop.structure_codec import structure_to_params
from surrogates.composition import atomic_fractions, fraction_names
from surrogates.universal import single_point_energies, structure_embedding


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` whole or not at all (a killed run leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part.npz")
    np.savez(partial, **arrays)  # type: ignore[arg-type]
    partial.replace(path)


def structure_digest(structure: Structure) -> str:
    """A short stable name of a structure: the hash of its compact canonical form."""
    body = str(structure_to_params(structure)["structure"])
    return hashlib.sha256(body.encode()).hexdigest()[:24]


class EmbeddingFeaturizer:
    """A structure pool's featurizer: rows of a universal model's embedding, cached.

    Args:
        model: A universal model that offers an embedding (``"chgnet"``, ``"mace-mp"``).
        cache: An ``.npz`` file that keeps the rows between runs; ``None`` keeps them in memory.
        device: ``"cpu"`` or ``"cuda"``.
        elements: The chemical system, whose atomic fractions lead each row; ``None``: the
            embedding alone.
    """

    def __init__(
        self,
        model: str,
        cache: str | Path | None = None,
        device: str = "cpu",
        elements: Sequence[str] | None = None,
    ) -> None:
        self.model, self.device = model, device
        self.elements = tuple(sorted(elements or ()))
        self.cache = None if cache is None else Path(cache)
        self._rows: dict[str, np.ndarray] = {}
        if self.cache is not None and self.cache.is_file():
            with np.load(self.cache) as stored:
                self._rows = dict(zip(stored["digests"].tolist(), stored["rows"], strict=True))
        self._width: int | None = next((len(r) for r in self._rows.values()), None)

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``e + k`` columns: the fractions of the ``e`` elements, the ``k`` of the
        embedding (known after the first structure)."""
        if self._width is None:
            raise RuntimeError("the embedding's width is known once a structure has been featurised")
        return fraction_names(self.elements) + [f"{self.model}_{i}" for i in range(self._width)]

    def features(self, structures: Sequence[Structure]) -> np.ndarray:
        """``n x (e + k)`` atomic fractions and embeddings of ``structures``; only unseen
        structures run the model.

        Raises:
            ValueError: a structure holds an element outside the chemical system.
        """
        fractions = atomic_fractions(structures, self.elements) if self.elements else None
        digests = [structure_digest(s) for s in structures]
        missing = {d: s for d, s in zip(digests, structures, strict=True) if d not in self._rows}
        if missing:
            atoms = [s.to_ase_atoms() for s in missing.values()]
            rows = structure_embedding(self.model, atoms, self.device)
            self._rows.update(zip(missing, np.asarray(rows, dtype=float), strict=True))
            self._width = rows.shape[1]
            self._save()
        if not digests:
            return np.zeros((0, len(self.elements) + (self._width or 0)))
        embedded = np.stack([self._rows[d] for d in digests])
        return embedded if fractions is None else np.hstack([fractions, embedded])

    def _save(self) -> None:
        if self.cache is not None:
            digests, rows = list(self._rows), list(self._rows.values())
            write_npz(self.cache, digests=np.array(digests), rows=np.stack(rows))


class Featurizer(Protocol):
    """What a structure pool asks of its featurizer."""

    @property
    def feature_names(self) -> list[str]: ...

    def features(self, structures: Sequence[Structure]) -> np.ndarray: ...


class StackedFeaturizer:
    """Several featurizers' columns side by side (e.g. pair features, then an embedding).

    Args:
        featurizers: In column order; only the first should lead with atomic fractions.
    """

    def __init__(self, *featurizers: Featurizer) -> None:
        if not featurizers:
            raise ValueError("StackedFeaturizer needs at least one featurizer")
        self.featurizers = featurizers
        self.elements: tuple[str, ...] = tuple(getattr(featurizers[0], "elements", ()))

    @property
    def feature_names(self) -> list[str]:
        return [name for f in self.featurizers for name in f.feature_names]

    def features(self, structures: Sequence[Structure]) -> np.ndarray:
        return np.hstack([f.features(structures) for f in self.featurizers])


class PriorEnergyColumn:
    """Another featurizer's columns and, last, a universal potential's formation energy per
    atom of each structure at its geometry as given (eV/atom), the column a GP's prior mean
    reads (:class:`surrogates.prior_mean.ColumnMean`).

    Formation energies are against the same model's energies of each element's reference
    crystal (``ase.build.bulk``). Energies are computed once per structure and kept like the
    embedding's rows (in memory, and in ``cache``), the references beside them.

    Args:
        base: The featurizer whose columns come first (atomic fractions leading).
        model: A universal potential (:func:`surrogates.universal.single_point_energies`).
        elements: The chemical system.
        cache: An ``.npz`` file that keeps the energies between runs; ``None``: in memory.
        device: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        base: Featurizer,
        model: str,
        elements: Sequence[str],
        cache: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.base, self.model, self.device = base, model, device
        self.elements = tuple(sorted(elements))
        self.cache = None if cache is None else Path(cache)
        self._energies: dict[str, float] = {}
        if self.cache is not None and self.cache.is_file():
            with np.load(self.cache) as stored:
                self._energies = dict(zip(stored["keys"].tolist(), stored["energies"].tolist(), strict=True))

    @property
    def feature_names(self) -> list[str]:
        return [*self.base.feature_names, f"{self.model}_formation_energy_per_atom"]

    def features(self, structures: Sequence[Structure]) -> np.ndarray:
        """``n x (d + 1)``: the base featurizer's rows, then the formation energies.

        Raises:
            UniversalModelUnavailable: the model cannot be loaded (not installed, or its
                weights absent offline).
        """
        from ase.build import bulk

        keys = [structure_digest(s) for s in structures]
        missing = {
            f"reference:{el}": bulk(el) for el in self.elements if f"reference:{el}" not in self._energies
        }
        missing.update(
            (k, s.to_ase_atoms()) for k, s in zip(keys, structures, strict=True) if k not in self._energies
        )
        if missing:
            energies = single_point_energies(self.model, list(missing.values()), self.device)
            self._energies.update(zip(missing, np.asarray(energies, dtype=float).tolist(), strict=True))
            self._save()
        references = np.array([self._energies[f"reference:{el}"] for el in self.elements])
        energy = np.array([self._energies[k] for k in keys])
        formation = energy - atomic_fractions(structures, self.elements) @ references
        return np.hstack([self.base.features(structures), formation.reshape(-1, 1)])

    def _save(self) -> None:
        if self.cache is not None:
            keys, energies = list(self._energies), list(self._energies.values())
            write_npz(self.cache, keys=np.array(keys), energies=np.array(energies))
