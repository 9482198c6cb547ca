"""The MACE committee as a campaign's surrogate of relaxed formation energy.

``[surrogate] type = "committee"``: the committee (:mod:`surrogates.mlip`) learns the
campaign's labelled frames (the oracle's relaxed structures with energy, forces and stress),
optionally as a correction to a universal potential (Δ-learning, ``baseline``). To score a
candidate it relaxes the candidate's structure with its mean potential (after an optional
pre-relaxation by a universal potential) and predicts, member by member, the formation energy
per atom against the oracle's elemental references. The members' predictions are the ensemble
dimension of a BoTorch ``EnsembleModel`` (:class:`FormationEnsemble`, a
:class:`~surrogates.mlip.StructureEnsemble`), so every acquisition works unchanged: the
posterior mean is the members' mean, its variance their spread.

Model inputs are rows ending in a structure key (:class:`~surrogates.structure_keys.StructureKeys`,
the pool's featurizer, which may put the atomic fractions first). Relaxed candidates are kept
per key for one fit, and the next fit relaxes each from where the last one left it (a few FIRE
steps, where starting over takes up to ``relax.steps``); pre-relaxed ones, which do not depend
on the fit, are kept for the surrogate's life.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from botorch.acquisition.objective import PosteriorTransform, ScalarizedPosteriorTransform
from botorch.posteriors import Posterior
from botorch.posteriors.ensemble import EnsemblePosterior
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.frame import Frame
from surrogates.base import Surrogate, SurrogateError
from surrogates.ensemble_posterior import MemberPosterior
from surrogates.mlip import MLIPCommittee, StructureEnsemble
from surrogates.relaxation import RelaxedCandidates, RelaxSettings
from surrogates.structure_keys import StructureKeys


class TrainingSet(NamedTuple):
    """What the committee learns from: labelled frames and the oracle's elemental references."""

    frames: list[Frame]
    references_ev_per_atom: dict[str, float]
    """Energy per atom of each element's reference structure (eV/atom), as the oracle used."""


class FormationEnsemble(StructureEnsemble):
    """The committee's members' formation energies per atom (eV/atom) of relaxed candidates.

    Args:
        committee: A fitted committee.
        structures: Relaxed structures by key (relaxed when first asked for).
        references_ev_per_atom: Elemental reference energies (eV/atom).
    """

    def __init__(
        self,
        committee: MLIPCommittee,
        structures: Sequence[Atoms],
        references_ev_per_atom: Mapping[str, float],
    ) -> None:
        super().__init__(committee, structures)
        self.references = dict(references_ev_per_atom)

    def check(self, atoms: Atoms) -> None:
        """Raises:
        SurrogateError: the candidate has an element without a reference energy."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.references))
        if unknown:
            raise SurrogateError(
                f"no reference energy for {unknown}: no labelled frame of the oracle has them yet"
            )

    def per_atom(self, atoms: Atoms, energy: np.ndarray) -> np.ndarray:
        """``s`` members' total energies (eV) → formation energies per atom (eV/atom)."""
        reference = sum(self.references[s] for s in atoms.get_chemical_symbols())
        return (energy - reference) / len(atoms)

    def posterior(  # type: ignore[override]  # EnsembleModel's signature
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> Posterior:
        """The members' posterior (a :class:`MemberPosterior`, which every sampler can draw
        from); a scalarisation (how the loop weighs and signs objectives) is applied to every
        member's values, which BoTorch's ``scalarize_posterior`` cannot do for an ensemble."""
        scalarize = isinstance(posterior_transform, ScalarizedPosteriorTransform)
        posterior = super().posterior(X, output_indices, None if scalarize else posterior_transform, **kwargs)
        if not isinstance(posterior, EnsemblePosterior):
            return posterior
        values = posterior.values
        if isinstance(posterior_transform, ScalarizedPosteriorTransform):
            weights = torch.as_tensor(posterior_transform.weights).to(values)
            values = (values @ weights).unsqueeze(-1) + posterior_transform.offset
        return MemberPosterior(values, weights=self.ensemble_weights)


class CommitteeSurrogate(Surrogate):
    """A MACE committee that predicts the relaxed formation energy per atom of candidates.

    Args:
        committee: The committee (not fitted yet; it keeps its weights between fits and
            warm-starts).
        keys: The structure table the model inputs index (the pool's featurizer).
        training: Gives the labelled frames to learn from when :meth:`fit` is called.
        relax: How the committee relaxes a candidate before scoring it.
        prerelax: A universal potential that relaxes candidates first (``None``: none).
        prerelax_settings: How far the universal potential relaxes them.
    """

    def __init__(
        self,
        committee: MLIPCommittee,
        keys: StructureKeys,
        training: Callable[[], TrainingSet],
        relax: RelaxSettings | None = None,
        prerelax: BaseCalculator | None = None,
        prerelax_settings: RelaxSettings | None = None,
    ) -> None:
        super().__init__()
        self.committee, self.keys = committee, keys
        self.frames_source = training  # not `training`: nn.Module's train/eval flag
        self.relax = relax or RelaxSettings()
        # Pre-relaxation does not depend on the fit: kept for the surrogate's life.
        self.prerelaxed = RelaxedCandidates(
            keys.atoms, lambda: len(keys), prerelax, prerelax_settings or self.relax
        )
        self.ensemble: FormationEnsemble | None = None
        # The latest relaxed structure of each candidate relaxed by an earlier fit: where the
        # current fit's relaxations start (a table, not the ensembles, which would chain).
        self._last_relaxed: dict[int, Atoms] = {}
        self.references: dict[str, float] = {}
        self._n_train = 0

    def fit(self, dataset: SupervisedDataset) -> CommitteeSurrogate:
        """Train the committee on the campaign's labelled frames (``dataset`` says only that
        there are some); the next posterior relaxes candidates with the new weights.

        Raises:
            SurrogateError: there are no labelled frames to learn from.
        """
        training = self.frames_source()
        if not training.frames:
            raise SurrogateError(
                f"the committee has {dataset.X.shape[0]} measured candidate(s) but no labelled frame "
                "(structure, energy, forces) to learn from; it needs an oracle that records them "
                "([oracle] type = 'dft')"
            )
        self.committee.fit(training.frames)
        self.references = training.references_ev_per_atom
        if self.ensemble is not None and isinstance(self.ensemble.structures, RelaxedCandidates):
            self._last_relaxed = {**self._last_relaxed, **self.ensemble.structures.snapshot()}
        self.ensemble = self.fresh_ensemble()
        self._n_train = len(training.frames)
        return self

    def fresh_ensemble(self, together: bool = True, restart: bool = True) -> FormationEnsemble:
        """The current fit's ensemble with nothing relaxed or scored yet.

        Args:
            together: Relax the candidates a question needs together, with one committee call
                per step for all of them (:func:`~surrogates.relaxation.relax_many`); ``False``
                relaxes each alone through the committee's calculator (the same structures,
                many more model calls: what benchmarks compare against).
            restart: Start each candidate's relaxation where the last fit's left it, if it
                relaxed that one; ``False`` starts from the (pre-relaxed) candidate.
        """
        last = self._last_relaxed if restart else {}

        def start(key: int) -> Atoms:
            kept = last.get(key)
            return self.prerelaxed[key] if kept is None else kept

        relaxed = RelaxedCandidates(
            start,
            lambda: len(self.keys),
            self.committee.calculator(),
            self.relax,
            batch_forces=self.committee.mean_forces_many if together else None,
        )
        return FormationEnsemble(self.committee, relaxed, self.references)

    # --- the BoTorch Model interface, delegated to the fitted ensemble ----------------------

    @property
    def fitted(self) -> FormationEnsemble:
        if self.ensemble is None:
            raise SurrogateError("the committee surrogate has not been fitted yet; call fit(dataset)")
        return self.ensemble

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> Posterior:
        """The ensemble posterior at ``batch x q x d`` rows (keys last): ``batch x s x q x 1`` values."""
        return self.fitted.posterior(X, *args, **kwargs)

    def summary(self) -> dict[str, Any]:
        ensemble = self.fitted
        relaxed = ensemble.structures
        return {
            "type": "CommitteeSurrogate",
            "size": self.committee.size,
            "n_train": self._n_train,
            "fits": self.committee.fits,
            "baseline": None if self.committee.baseline is None else self.committee.baseline.name,
            "last_losses": list(self.committee.last_losses),
            "relaxed": relaxed.relaxed if isinstance(relaxed, RelaxedCandidates) else None,
            "relax_force_evaluations": (
                relaxed.force_evaluations if isinstance(relaxed, RelaxedCandidates) else None
            ),
        }

    def close(self) -> None:
        """Stop the committee's training processes (those it started)."""
        self.committee.close()
