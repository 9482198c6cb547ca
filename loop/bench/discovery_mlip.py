"""The discovery benchmark's MLIP-based variants: what they read of the pool and how they learn.

``chgnet_energies``: CHGNet's single-point energies of the pool as generated (cached beside it
in ``pool-<key>.chgnet-energy.npz``), the cheap fidelity of ``alloop bench multifidelity``'s
structure problem, against CHGNet's energies of the ground truth's elemental references
(:func:`chgnet_references`).
``gp_chgnet_thompson``: the campaign's GP on CHGNet's per-structure embedding
(:class:`~surrogates.descriptors.EmbeddingFeaturizer`, rows cached beside the pool in
``pool-<key>.chgnet.npz``), so only the inputs differ from ``gp_pair_thompson``.
``committee_thompson``: the MACE committee surrogate
(:class:`~surrogates.committee_surrogate.CommitteeSurrogate`, its defaults) learning the EMT
frames (relaxed structure, energy, forces) of the candidates evaluated so far; EMT relaxes each
evaluated candidate once more for its frame, at the ground truth's settings.
:func:`committee_probe` times one committee decision on a sample of the pool, the evidence of
whether a whole campaign fits the machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from loop.acquisition import Acquisition
from loop.bench.discovery_truth import CAMPAIGN_SETTINGS, read_truth
from loop.frame import Frame, structure_from_dict
from loop.structures import StructurePool
from oracles.dft import candidate_atoms
from oracles.dft_job import JobSettings, execute
from surrogates.committee_surrogate import CommitteeSurrogate, TrainingSet
from surrogates.descriptors import EmbeddingFeaturizer
from surrogates.mlip import MACESettings, MLIPCommittee, StructureEnsemble
from surrogates.relaxation import RelaxedCandidates
from surrogates.structure_keys import StructureKeys
from surrogates.universal import single_point_energies


def chgnet_energies(pool: StructurePool, cache: Path, chunk: int = 512) -> np.ndarray:
    """CHGNet 0.3.0's single-point energy per atom (eV/atom) of every candidate at its geometry
    as generated (the structure EMT starts relaxing from), ``N``.

    Computed once and kept in ``cache`` (``ids``, ``energies``), written after every ``chunk``
    candidates, so a killed run continues where it stopped."""
    known = _read_energies(cache)
    missing = [i for i, cid in enumerate(pool.ids) if cid not in known]
    for start in range(0, len(missing), chunk):
        rows = missing[start : start + chunk]
        atoms = [candidate_atoms(pool.candidates[i]) for i in rows]
        known.update(zip([pool.ids[i] for i in rows], single_point_energies("chgnet", atoms), strict=True))
        _write_energies(cache, known)
    return np.array([known[cid] for cid in pool.ids])


def chgnet_references(elements: Sequence[str], cache: Path) -> np.ndarray:
    """CHGNet's energy per atom (eV/atom) of each element's reference crystal, ``ase.build.bulk``
    as the EMT ground truth has it (the pool holds no pure candidates); kept in ``cache``
    beside the candidates' energies, as ``reference:<element>``."""
    from ase.build import bulk

    known = _read_energies(cache)
    missing = [el for el in elements if f"reference:{el}" not in known]
    if missing:
        energies = single_point_energies("chgnet", [bulk(el) for el in missing])
        known.update({f"reference:{el}": float(e) for el, e in zip(missing, energies, strict=True)})
        _write_energies(cache, known)
    return np.array([known[f"reference:{el}"] for el in elements])


def _read_energies(cache: Path) -> dict[str, float]:
    if not cache.is_file():
        return {}
    with np.load(cache) as stored:
        return dict(zip(stored["ids"].tolist(), stored["energies"].tolist(), strict=True))


def _write_energies(cache: Path, known: dict[str, float]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".part.npz")
    np.savez(partial, ids=np.array(list(known)), energies=np.array(list(known.values()), dtype=float))
    partial.replace(cache)


def chgnet_pool(pool: StructurePool, cache: Path) -> StructurePool:
    """The pool with its atomic fractions and CHGNet's 64-wide embedding as inputs (``N x (e + 64)``;
    the embedding computed once, kept in ``cache``)."""
    featurizer = EmbeddingFeaturizer("chgnet", cache, elements=pool.featurizer.elements)
    return StructurePool(pool.candidates, featurizer)  # type: ignore[arg-type]


class EMTFrames:
    """The labelled frames of the evaluated candidates: each relaxed with EMT once, kept.

    Args:
        pool: The benchmark's pool.
        evaluated: The pool indices evaluated so far (read at every call; the campaign appends).
        references: Elemental reference energies (eV/atom) of the ground truth.
    """

    def __init__(self, pool: StructurePool, evaluated: list[int], references: dict[str, float]) -> None:
        self.pool, self.evaluated, self.references = pool, evaluated, references
        self.settings = JobSettings.from_dict(CAMPAIGN_SETTINGS)
        self._frames: dict[int, Frame] = {}

    def __call__(self) -> TrainingSet:
        with tempfile.TemporaryDirectory() as folder:
            for index in self.evaluated:
                if index not in self._frames:
                    self._frames[index] = self._frame(index, folder)
        frames = [self._frames[i] for i in self.evaluated]
        return TrainingSet(frames, self.references)

    def _frame(self, index: int, folder: str) -> Frame:
        outcome = execute(candidate_atoms(self.pool.candidates[index]), self.settings, folder)
        atoms = structure_from_dict(outcome["atoms"])
        stress = None if outcome.get("stress") is None else np.asarray(outcome["stress"])
        return Frame.from_atoms(
            atoms, float(outcome["energy"]), np.asarray(outcome["forces"]), stress, self.pool.ids[index]
        )


def keys_pool(pool: StructurePool) -> StructurePool:
    """The pool with ``N x 1`` structure keys as inputs, the committee's model inputs."""
    return StructurePool(pool.candidates, StructureKeys(pool.featurizer.elements))  # type: ignore[arg-type]


def committee_surrogate(
    keyed: StructurePool,
    evaluated: list[int],
    references: dict[str, float],
    seed: int,
    settings: MACESettings | None = None,
    executor: Executor | None = None,
) -> CommitteeSurrogate:
    """The committee surrogate over ``keyed`` (a :func:`keys_pool`): MACE at ``settings``
    (default: its defaults), members trained in ``executor`` (default: one process of its own)."""
    keys = keyed.featurizer
    assert isinstance(keys, StructureKeys)
    elements = sorted(references)
    committee = MLIPCommittee(elements, settings or MACESettings(), seed=seed, workers=1, executor=executor)
    training = EMTFrames(keyed, evaluated, references)
    return CommitteeSurrogate(committee, keys, training)


def references(truth_path: Path) -> dict[str, float]:
    """The ground truth's elemental references (eV/atom), written beside its rows."""
    if not read_truth(truth_path):
        raise FileNotFoundError(f"no ground truth at {truth_path}")
    return dict(json.loads(truth_path.with_name(truth_path.stem + "-references.json").read_text()))


def committee_probe(
    pool: StructurePool,
    energies: Tensor,
    truth_path: Path,
    observations: int,
    sample: int,
    seed: int = 0,
    settings: MACESettings | None = None,
    executor: Executor | None = None,
    one_by_one: int = 20,
    refit: int = 0,
) -> dict[str, Any]:
    """Time one committee decision: EMT frames and fit on ``observations`` random candidates,
    then relaxing and scoring ``sample`` others (Thompson, one pick); the scoring cost per
    candidate, times the free pool, gives the decision's seconds at this pool size.

    The candidates are relaxed together (one committee call per step for all of them); the
    first ``one_by_one`` of them are then relaxed and scored again each alone, as before
    batching, in the same process: ``one_by_one`` holds that path's cost per candidate and the
    largest difference between the two paths' member energies.

    With ``refit`` > 0, the next round is timed too: ``refit`` more candidates' frames, a warm
    fit, and the same ``sample`` scored twice, each relaxation starting where the first fit's
    left it (as campaigns do) and, for comparison, from the candidate (``second_round``)."""
    keyed = keys_pool(pool)
    X = keyed.X
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=observations + sample, replace=False)
    observed: list[int] = [int(i) for i in chosen[:observations]]
    scored: Sequence[int] = [int(i) for i in chosen[observations:]]
    surrogate = committee_surrogate(keyed, observed, references(truth_path), seed, settings, executor)
    try:
        start = time.perf_counter()
        emt_frames = surrogate.frames_source  # relaxes each candidate once, then keeps its frame
        training = emt_frames()  # the EMT frames, outside the fit's time
        frames_s = time.perf_counter() - start
        Y = energies[observed].unsqueeze(-1)
        dataset = SupervisedDataset(X[observed], Y, feature_names=keyed.feature_names, outcome_names=["e"])
        start = time.perf_counter()
        surrogate.frames_source = lambda: training
        surrogate.fit(dataset)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        Acquisition("thompson", [-1.0]).select_from_pool(
            surrogate, X[list(scored)], 1, X[observed], Y, None, seed
        )
        score_s = time.perf_counter() - start
        alone = surrogate.fresh_ensemble(together=False)
        keys = [int(k) for k in X[list(scored[:one_by_one]), -1].tolist()]
        start = time.perf_counter()
        members = [alone.member_energies(k) for k in keys]
        alone_s = time.perf_counter() - start
        difference = max(
            (
                float((e - surrogate.fitted.member_energies(k)).abs().max())
                for e, k in zip(members, keys, strict=True)
            ),
            default=None,
        )
        first_evaluations = _force_evaluations(surrogate.fitted)
        second = None
        if refit > 0:
            second = _second_round(surrogate, emt_frames, keyed, observed, scored, energies, refit, seed)
    finally:
        surrogate.close()
    free = len(pool) - observations
    return {
        "observations": observations,
        "frames": len(training.frames),
        "emt_frames_s": frames_s,
        "fit_s": fit_s,
        "scored": len(scored),
        "score_s": score_s,
        "score_s_per_candidate": score_s / len(scored),
        "free_candidates": free,
        "seconds_per_decision_estimate": fit_s + score_s / len(scored) * free,
        "force_evaluations": first_evaluations,
        "second_round": second,
        "one_by_one": {
            "scored": len(keys),
            "score_s": alone_s,
            "score_s_per_candidate": alone_s / len(keys) if keys else None,
            "max_member_energy_difference_ev_per_atom": difference,
        },
    }


def _force_evaluations(ensemble: StructureEnsemble) -> int | None:
    relaxed = ensemble.structures
    return relaxed.force_evaluations if isinstance(relaxed, RelaxedCandidates) else None


def _second_round(
    surrogate: CommitteeSurrogate,
    emt_frames: Callable[[], TrainingSet],
    keyed: StructurePool,
    observed: list[int],
    scored: Sequence[int],
    energies: Tensor,
    refit: int,
    seed: int,
) -> dict[str, Any]:
    """The probe's next round: ``refit`` more frames, a warm fit, and ``scored`` relaxed and
    scored from the last fit's structures and from the candidates (see :func:`committee_probe`)."""
    taken = set(observed) | set(scored)
    rng = np.random.default_rng(seed + 1)
    extra = [int(i) for i in rng.permutation(len(keyed.X)) if int(i) not in taken][:refit]
    observed.extend(extra)  # EMTFrames reads this list
    X, Y = keyed.X, energies[observed].unsqueeze(-1)
    training = emt_frames()  # the new candidates' frames only; the first round's are kept
    surrogate.frames_source = lambda: training
    start = time.perf_counter()
    surrogate.fit(SupervisedDataset(X[observed], Y, feature_names=keyed.feature_names, outcome_names=["e"]))
    fit_s = time.perf_counter() - start
    keys = [int(k) for k in X[list(scored), -1].tolist()]
    rounds: dict[str, Any] = {}
    members = {}
    fresh = surrogate.fresh_ensemble(restart=False)
    for name, ensemble in (("restarted", surrogate.fitted), ("from_the_candidates", fresh)):
        start = time.perf_counter()
        ensemble.score(keys)
        members[name] = torch.stack([ensemble.member_energies(k) for k in keys])
        seconds = time.perf_counter() - start
        rounds[name] = {
            "score_s": seconds,
            "score_s_per_candidate": seconds / len(keys),
            "force_evaluations": _force_evaluations(ensemble),
        }
    gap = (members["restarted"].mean(dim=-1) - members["from_the_candidates"].mean(dim=-1)).abs()
    return {
        "observations": len(observed),
        "fit_s": fit_s,
        **rounds,
        "mean_energy_difference_ev_per_atom": {"median": float(gap.median()), "max": float(gap.max())},
    }
