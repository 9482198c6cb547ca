"""Learned descriptors: a universal model's per-structure embedding as a GP's inputs.

``[surrogate] descriptors = "chgnet"`` replaces the hand-made pair features of a structure pool
with what a universal potential pretrained on the Materials Project sees of each structure
(:func:`surrogates.universal.structure_embedding`). An embedding costs a forward pass of the
model, so each structure's row is computed once and kept: in memory, and in an ``.npz`` file
(beside the pool's cache) that later runs read back. Given the chemical system, the rows start
with the atomic fractions ``x_<element>`` (computed, not cached): an averaged embedding blurs
the exact composition, and the hull-aware acquisitions read the hull's coordinates there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from loop.structure_codec import structure_to_params
from surrogates.composition import atomic_fractions, fraction_names
from surrogates.universal import structure_embedding


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
        if self.cache is None:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache.with_name(self.cache.name + ".part.npz")
        np.savez(partial, digests=np.array(list(self._rows)), rows=np.stack(list(self._rows.values())))
        partial.replace(self.cache)
