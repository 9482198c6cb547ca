"""Crystal-structure spaces: pools of candidate structures, generated with pymatgen.

``[space.generator] type = "structures"`` builds a pool for a chemical system
(``["Cu", "Au", "Pd"]``) from two sources, alone or together:

* **Substitution** of the elements onto prototype structures (:mod:`loop.prototypes`: the
  built-in set, or structure files), de-duplicated by formula, space group and
  ``StructureMatcher``; these come first and keep their prototype's name.
* **Enumeration** of the distinct orderings of one or more parent crystals (``fcc``, ``bcc``,
  ``hcp``) in supercells of up to ``max_atoms`` atoms (:mod:`loop.orderings`); an ordering
  equal to a substituted prototype is dropped (the prototype has it, under its name).

Structures stream: :func:`candidate_batches` hands candidates over in batches, and a
:class:`StructurePool` keeps only each candidate's compact parameters
(:mod:`loop.structure_codec`), rebuilding structures a batch at a time when it featurises
them, so pools of 10^5 structures fit in a few hundred MB.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pymatgen.core import Structure
from torch import Tensor

from loop.candidate import Candidate
from loop.errors import ConfigError, SpaceError, describe_validation_error
from loop.featurize import StructureFeaturizer
from loop.orderings import ParentLattice, check_elements, iter_orderings
from loop.prototypes import DistinctStructures, load_prototypes, substitute
from loop.structure_codec import canonical_params, structure_from_params, structure_to_params

#: Candidates per batch handed to consumers (generation, featurisation).
BATCH_SIZE = 1024
_PARENT_NAMES: tuple[str, ...] = get_args(ParentLattice)
#: The structure form of cached pools: 2 is the canonical one; caches of another form are made again.
_CACHE_FORM = 2


class StructurePool:
    """A finite pool of crystal structures, featurised for the surrogate.

    Implements the :class:`loop.pool.Pool` protocol: ``ids``, ``candidates``, ``X``
    (``N x d`` features), ``feature_names`` and :meth:`encode`. Structures are not kept:
    :meth:`structure` rebuilds one from its candidate, :meth:`batches` streams them.

    Args:
        candidates: Candidates whose parameters carry a ``structure``
            (see :func:`~loop.structure_codec.structure_to_params`).
        featurizer: Turns structures into feature rows; default: a
            :class:`~loop.featurize.StructureFeaturizer` over the pool's elements.
    """

    def __init__(
        self, candidates: Iterable[Candidate], featurizer: StructureFeaturizer | None = None
    ) -> None:
        self.candidates: tuple[Candidate, ...] = tuple(candidates)
        if not self.candidates:
            raise SpaceError("a structure pool needs at least one candidate")
        self.ids: list[str] = [c.id for c in self.candidates]
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise SpaceError("duplicate candidate ids in structure pool")
        if featurizer is None:
            elements = {
                el.symbol for c in self.candidates for el in structure_from_params(c.params).composition
            }
            featurizer = StructureFeaturizer(sorted(elements))
        self.featurizer = featurizer
        self._X: Tensor | None = None
        self._rows_of_old_ids: dict[str, int | None] = {}

    @classmethod
    def from_structures(
        cls,
        structures: Iterable[Structure | tuple[str, Structure]],
        featurizer: StructureFeaturizer | None = None,
    ) -> StructurePool:
        """A pool from structures, or ``(prototype name, structure)`` pairs."""
        candidates = []
        for item in structures:
            name, structure = item if isinstance(item, tuple) else ("", item)
            candidates.append(Candidate(structure_to_params(structure, name)))
        return cls(candidates, featurizer)

    def __len__(self) -> int:
        return len(self.candidates)

    def row_of(self, candidate: Candidate) -> int | None:
        """The row of a candidate the ledger holds, or ``None`` if the pool lacks it.

        A ledger written before structures were encoded canonically may hold another id for a
        pool candidate; its parameters, re-encoded, give the id of today.
        """
        row = self.index.get(candidate.id)
        if row is not None:
            return row
        if candidate.id not in self._rows_of_old_ids:
            try:
                today = Candidate(canonical_params(candidate.params)).id
            except SpaceError:
                today = ""
            self._rows_of_old_ids[candidate.id] = self.index.get(today)
        return self._rows_of_old_ids[candidate.id]

    def structure(self, i: int) -> Structure:
        """The structure of candidate ``i``, rebuilt from its parameters."""
        return structure_from_params(self.candidates[i].params)

    def batches(self, batch_size: int = BATCH_SIZE) -> Iterator[tuple[Sequence[Candidate], Tensor]]:
        """The candidates in order, ``batch_size`` at a time, with their ``b x d`` features."""
        for start in range(0, len(self), batch_size):
            chunk = self.candidates[start : start + batch_size]
            if self._X is not None:
                yield chunk, self._X[start : start + len(chunk)]
            else:
                yield chunk, self._features(c.params for c in chunk)

    @property
    def X(self) -> Tensor:
        """``N x d`` features of every candidate, built once, a batch at a time."""
        if self._X is None:
            self._X = torch.cat([features for _, features in self.batches()])
        return self._X

    @property
    def feature_names(self) -> list[str]:
        return self.featurizer.feature_names

    def encode(self, params: Iterable[Mapping[str, Any]]) -> Tensor:
        """``n x d`` features of candidates given by their parameters."""
        params = list(params)
        known = [self.index.get(Candidate(p).id) for p in params]
        if all(i is not None for i in known):
            return self.X[[i for i in known if i is not None]]
        return self._features(params)

    def save(self, path: str | Path) -> None:
        """Write the candidates' parameters to a JSON file (a cache of the generation)."""
        Path(path).write_text(json.dumps([dict(c.params) for c in self.candidates]))

    @classmethod
    def load(cls, path: str | Path, featurizer: StructureFeaturizer | None = None) -> StructurePool:
        """A pool from a file written by :meth:`save`."""
        return cls([Candidate(p) for p in json.loads(Path(path).read_text())], featurizer)

    def _features(self, params: Iterable[Mapping[str, Any]]) -> Tensor:
        structures = [structure_from_params(p) for p in params]
        return torch.tensor(self.featurizer.features(structures), dtype=torch.double)


class StructureSpaceOptions(BaseModel):
    """``[space.generator]`` options of ``type = "structures"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    elements: list[str] = Field(min_length=1)
    lattice: list[ParentLattice] = ["fcc"]
    """Parent crystals (``fcc``, ``bcc``, ``hcp``; one name or a list) to enumerate orderings
    of; empty or none: only prototype substitution."""
    max_atoms: int = Field(default=4, ge=1, le=12)
    min_atoms: int = Field(default=1, ge=1)
    min_species: int = Field(default=2, ge=1)
    prototypes: list[str] = []
    """Built-in prototype names (:data:`loop.prototypes.BUILT_IN`) or structure files
    (relative to the config) to substitute; ``["built-in"]`` is all built-in ones."""
    cache: str | None = None
    """JSON file (relative to the config) that keeps the generated candidates between runs."""

    @field_validator("elements")
    @classmethod
    def _elements(cls, elements: list[str]) -> list[str]:
        check_elements(elements)
        return elements

    @field_validator("lattice", mode="before")
    @classmethod
    def _lattices(cls, value: Any) -> list[str]:
        names = [] if value is None else [value] if isinstance(value, str) else list(value)
        allowed = " or ".join([", ".join(f"'{n}'" for n in _PARENT_NAMES[:-1]), f"'{_PARENT_NAMES[-1]}'"])
        for name in names:
            if name not in _PARENT_NAMES:
                raise ValueError(f"Input should be {allowed}, got {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"a parent lattice is named twice: {names}")
        return names


def iter_structures(
    options: StructureSpaceOptions, base_dir: Path = Path(".")
) -> Iterator[tuple[str, Structure]]:
    """``(name, structure)`` of the pool the options describe: substituted prototypes (named
    by prototype), then enumerated orderings (named by parent lattice) that no prototype has."""
    from loop.prototypes import BUILT_IN

    distinct = DistinctStructures()
    if options.prototypes:
        names = [n for name in options.prototypes for n in (BUILT_IN if name == "built-in" else [name])]
        yield from substitute(load_prototypes(names, base_dir), options.elements, distinct)
    for parent in options.lattice:
        for structure in iter_orderings(
            options.elements, parent, options.max_atoms, options.min_atoms, options.min_species
        ):
            if structure not in distinct:
                yield parent, structure


def candidate_batches(
    options: StructureSpaceOptions, base_dir: Path = Path("."), batch_size: int = BATCH_SIZE
) -> Iterator[list[Candidate]]:
    """The pool's candidates, ``batch_size`` at a time, each once (by id), in a fixed order.

    Raises:
        SpaceError: the options make no candidates at all.
    """
    fresh = _distinct_candidates(iter_structures(options, base_dir))
    made = False
    while batch := list(itertools.islice(fresh, batch_size)):
        made = True
        yield batch
    if not made:
        raise SpaceError("the structure generator made no candidates; set 'lattice' or 'prototypes'")


def _distinct_candidates(structures: Iterable[tuple[str, Structure]]) -> Iterator[Candidate]:
    seen: set[str] = set()
    for name, structure in structures:
        candidate = Candidate(structure_to_params(structure, name))
        if candidate.id not in seen:
            seen.add(candidate.id)
            yield candidate


def generate(options: StructureSpaceOptions, base_dir: Path = Path(".")) -> StructurePool:
    """The pool the options describe (see :func:`iter_structures`)."""
    candidates = itertools.chain.from_iterable(candidate_batches(options, base_dir))
    return StructurePool(candidates, StructureFeaturizer(options.elements))


def pool_from_config(options: Mapping[str, Any], config: Any) -> StructurePool:
    """Builder for ``[space.generator] type = "structures"``.

    Raises:
        ConfigError: an option is unknown or invalid (the message names ``space.generator.<key>``).
    """
    try:
        parsed = StructureSpaceOptions.model_validate(dict(options))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "space.generator")) from None
    except SpaceError as exc:
        raise ConfigError(f"space.generator: {exc}") from None
    if parsed.min_atoms > parsed.max_atoms:
        raise ConfigError("space.generator.min_atoms: must not exceed max_atoms")
    base_dir = Path(getattr(config, "base_dir", "."))
    cache_path = None if parsed.cache is None else config.resolve(parsed.cache)
    key = parsed.model_dump_json()
    if cache_path is not None and cache_path.is_file():
        stored = json.loads(cache_path.read_text())
        if stored.get("options") == key and stored.get("form") == _CACHE_FORM:
            featurizer = StructureFeaturizer(parsed.elements)
            return StructurePool([Candidate(p) for p in stored["candidates"]], featurizer)
    try:
        pool = _cached_generate(key, str(base_dir))
    except SpaceError as exc:
        raise ConfigError(f"space.generator: {exc}") from None
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        candidates = [dict(c.params) for c in pool.candidates]
        payload = {"options": key, "form": _CACHE_FORM, "candidates": candidates}
        cache_path.write_text(json.dumps(payload))
    return pool


@cache
def _cached_generate(key: str, base_dir: str) -> StructurePool:
    """Generation is deterministic: one per process and set of options."""
    start = time.perf_counter()
    pool = generate(StructureSpaceOptions.model_validate_json(key), Path(base_dir))
    pool.generation_s = time.perf_counter() - start  # type: ignore[attr-defined]
    return pool
