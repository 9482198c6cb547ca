"""Prototype substitution and de-duplication; pools that mix prototypes and orderings."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from loop.orderings import enumerate_orderings
from loop.prototypes import BUILT_IN, DistinctStructures, load_prototypes, prototype, substitute
from loop.structures import StructureSpaceOptions, candidate_batches, generate

#: Space group and atoms per primitive cell of each built-in prototype, as references give them.
EXPECTED = {
    "A1": (225, 1), "A2": (229, 1), "A3": (194, 2), "A15": (223, 8), "B1": (225, 2),
    "B2": (221, 2), "B3": (216, 2), "C1": (225, 3), "C11b": (139, 3), "C14": (194, 12),
    "C15": (227, 6), "D0_3": (225, 4), "D0_19": (194, 8), "D0_22": (139, 4), "L1_0": (123, 2),
    "L1_1": (166, 2), "L1_2": (221, 4), "L2_1": (225, 4),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")  # spglib, through pymatgen
def test_built_in_prototypes_have_their_space_groups_and_majority_placeholder_xa() -> None:
    assert set(BUILT_IN) == set(EXPECTED)
    for name, (number, n_atoms) in EXPECTED.items():
        structure = substitute({name: prototype(name)}, ["Cu", "Au", "Pd"])[0][1]  # Xa = Cu first
        assert len(structure) == n_atoms, name
        assert SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() == number, name
        amounts = structure.composition
        assert amounts["Cu"] == max(amounts.values()), name
    with pytest.raises(ValueError, match=r"unknown prototype 'X1'; built-in: \['A1', "):
        prototype("X1")


def test_distinct_structures_recognise_copies_in_other_cells() -> None:
    cuau = substitute({"L1_0": prototype("L1_0")}, ["Cu", "Au"])[0][1]
    distinct = DistinctStructures()
    assert distinct.add(cuau) and len(distinct) == 1
    bigger = cuau * (2, 1, 1)
    bigger.translate_sites(list(range(len(bigger))), [0.1, 0.2, 0.3])
    assert bigger in distinct and not distinct.add(bigger)
    other = substitute({"B2": prototype("B2")}, ["Cu", "Au"])[0][1]
    assert other not in distinct and distinct.add(other) and len(distinct) == 2


def test_structure_files_are_prototypes_named_by_their_stem(tmp_path: Path) -> None:
    l10 = substitute({"L1_0": prototype("L1_0")}, ["Ni", "Pt"])[0][1]
    l10.to(filename=str(tmp_path / "NiPt_L10.cif"))
    loaded = load_prototypes(["NiPt_L10.cif", "B2"], tmp_path)
    assert sorted(loaded) == ["B2", "NiPt_L10"]
    assert {s.specie.symbol for s in loaded["NiPt_L10"]} == {"Xa", "Xb"}
    made = substitute(loaded, ["Cu", "Au"])
    assert sorted(name for name, _ in made) == ["B2", "NiPt_L10"]  # AuCu = CuAu in both


def test_pool_with_prototypes_drops_the_orderings_they_already_are() -> None:
    options = StructureSpaceOptions.model_validate(
        {
            "elements": ["Cu", "Au"],
            "lattice": ["fcc", "bcc", "hcp"],
            "max_atoms": 4,
            "prototypes": ["built-in"],
        }
    )
    pool = generate(options)
    by_kind: dict[str, int] = {}
    for c in pool.candidates:
        by_kind[str(c.params["prototype"])] = by_kind.get(str(c.params["prototype"]), 0) + 1
    # fcc: 27 orderings less L1_2 (x2), L1_0, L1_1, D0_22 (x2); bcc: 27 less B2, D0_3 (x2),
    # C11b (x2); hcp: 11, none a prototype of at most 4 atoms.
    assert (by_kind["fcc"], by_kind["bcc"], by_kind["hcp"]) == (21, 22, 11)
    assert len(pool) == 65 - 11 + sum(v for k, v in by_kind.items() if k not in ("fcc", "bcc", "hcp"))
    structures = [pool.structure(i) for i in range(len(pool))]
    exact = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0)
    for a, b in itertools.combinations(structures, 2):
        if a.composition.reduced_formula == b.composition.reduced_formula:
            assert not exact.fit(a, b)
    dropped = [
        s for s in enumerate_orderings(["Cu", "Au"], "fcc", 4) if not any(exact.fit(s, t) for t in structures)
    ]
    assert len(dropped) == 0  # every fcc ordering is in the pool, under its own or a prototype's name


def test_candidates_stream_in_batches_in_the_pools_order() -> None:
    options = StructureSpaceOptions.model_validate(
        {"elements": ["Cu", "Au", "Pd"], "max_atoms": 4, "prototypes": ["L2_1"]}
    )
    batches = list(candidate_batches(options, batch_size=50))
    assert all(len(b) == 50 for b in batches[:-1]) and 0 < len(batches[-1]) <= 50
    ids = [c.id for b in batches for c in b]
    pool = generate(options)
    assert ids == pool.ids and len(set(ids)) == len(ids)
    assert pool.candidates[0].params["prototype"] == "L2_1"  # prototypes come first
    for start, (chunk, features) in zip(range(0, len(pool), 64), pool.batches(64), strict=True):
        assert [c.id for c in chunk] == pool.ids[start : start + 64]
        assert features.shape == (len(chunk), len(pool.feature_names))
    assert bool((pool.X[:64] == next(iter(pool.batches(64)))[1]).all())
