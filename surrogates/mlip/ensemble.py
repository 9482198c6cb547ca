"""The committee's BoTorch face: an ``EnsembleModel`` over a fixed list of structures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from ase import Atoms
from botorch.models.ensemble import EnsembleModel
from torch import Tensor

from surrogates.base import SurrogateError

if TYPE_CHECKING:
    from surrogates.mlip.committee import MLIPCommittee


class StructureEnsemble(EnsembleModel):
    """A BoTorch ``EnsembleModel`` over a fixed list of structures.

    Inputs are ``batch x q x d`` rows whose last column is an index into ``structures`` (the
    others, such as the atomic fractions a hull-aware acquisition reads, are passed over);
    outputs are the members' energies per atom (eV/atom), ``batch x s x q x 1``. Every BoTorch acquisition
    works on it (its posterior is an ``EnsemblePosterior``); ``posterior(X).variance`` is the
    committee's spread, ``mean`` the predicted energy.

    Args:
        committee: A fitted committee.
        structures: The structures indices refer to. A list is copied; any other sequence
            (one that builds or relaxes a structure when it is first asked for) is kept as given.
    """

    def __init__(self, committee: MLIPCommittee, structures: Sequence[Atoms]) -> None:
        super().__init__()
        if not committee.fitted:
            raise SurrogateError("the MLIP committee is not fitted yet")
        self.committee = committee
        self.structures = list(structures) if isinstance(structures, list) else structures
        self._num_outputs = 1
        self._cache: dict[int, Tensor] = {}

    def member_energies(self, index: int) -> Tensor:
        """``s``: every member's energy per atom of structure ``index`` (cached)."""
        self.score([index])
        return self._cache[index]

    def score(self, indices: Iterable[int]) -> None:
        """Predict the structures ``indices`` not cached yet, in batches: structures that are
        relaxed on first access (:class:`~surrogates.relaxation.RelaxedCandidates`) are
        relaxed together first."""
        missing = sorted({i for i in indices if i not in self._cache})
        if not missing:
            return
        prefetch = getattr(self.structures, "prefetch", None)
        if prefetch is not None:
            prefetch(missing)
        structures = [self.structures[i] for i in missing]
        for atoms in structures:
            self.check(atoms)  # before the model runs on any of them
        energies = self.committee.energies_many(structures)
        for i, atoms, energy in zip(missing, structures, energies, strict=True):
            self._cache[i] = torch.as_tensor(self.per_atom(atoms, energy), dtype=torch.float64)

    def check(self, atoms: Atoms) -> None:
        """Refuse a structure this model cannot score (every structure here)."""

    def per_atom(self, atoms: Atoms, energy: np.ndarray) -> np.ndarray:
        """``s`` members' total energies (eV) → what the model predicts: energy per atom (eV/atom)."""
        return energy / len(atoms)

    def forward(self, X: Tensor) -> Tensor:
        """``batch x q x d`` rows (indices last) → ``batch x s x q x 1`` energies per atom (eV/atom).

        Raises:
            SurrogateError: an index is not an integer in ``[0, len(structures))``.
        """
        indices = X[..., -1]
        if (
            not torch.equal(indices, indices.round())
            or indices.min() < 0
            or indices.max() >= len(self.structures)
        ):
            raise SurrogateError(f"inputs must be structure indices in [0, {len(self.structures)})")
        flat_indices = [int(i) for i in indices.reshape(-1).tolist()]
        self.score(flat_indices)
        flat = torch.stack([self._cache[i] for i in flat_indices])
        values = flat.reshape(*indices.shape, -1).to(X)  # batch x q x s
        return values.movedim(-1, -2).unsqueeze(-1)
