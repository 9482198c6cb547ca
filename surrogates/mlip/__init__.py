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

Modules: :mod:`~surrogates.mlip.settings` (a member's architecture and training),
:mod:`~surrogates.mlip.mace` (building and running one MACE model),
:mod:`~surrogates.mlip.training` (members training in worker processes),
:mod:`~surrogates.mlip.committee`, :mod:`~surrogates.mlip.prediction` (what it predicts),
:mod:`~surrogates.mlip.calculator` (ASE) and :mod:`~surrogates.mlip.ensemble` (BoTorch). A
labelled frame is :class:`loop.frame.Frame`, re-exported here.
"""

from loop.frame import Frame
from surrogates.mlip.calculator import CommitteeCalculator
from surrogates.mlip.committee import MLIPCommittee
from surrogates.mlip.ensemble import StructureEnsemble
from surrogates.mlip.mace import ENERGY, FORCES, STRESS
from surrogates.mlip.mace import _initial_model as _initial_model  # tests reach for it here
from surrogates.mlip.prediction import CommitteePrediction, force_error, force_z_scores
from surrogates.mlip.settings import MACESettings
from surrogates.mlip.training import _train_member as _train_member  # tests reach for it here
from surrogates.mlip.training import training_pool

__all__ = [
    "ENERGY",
    "FORCES",
    "STRESS",
    "CommitteeCalculator",
    "CommitteePrediction",
    "Frame",
    "MACESettings",
    "MLIPCommittee",
    "StructureEnsemble",
    "force_error",
    "force_z_scores",
    "training_pool",
]
