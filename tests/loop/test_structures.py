"""Structure spaces: enumeration, substitution, the pool and its configuration."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from loop.config import parse_config
from loop.errors import ConfigError, SpaceError
from loop.featurize import StructureFeaturizer
from loop.orderings import _BASES, _PARENTS, _space_group, atomic_volume, enumerate_orderings
from loop.prototypes import prototype, substitute
from loop.structure_codec import structure_to_params
from loop.structures import StructurePool, StructureSpaceOptions, generate, pool_from_config


def test_fcc_enumeration_matches_the_known_counts_and_has_no_duplicates() -> None:
    # Binary fcc orderings, pure elements dropped: 2, 6 and 19 with 2, 3 and 4 atoms per cell
    # (Hart & Forcade's 2, 3, 12 up to exchanging the two species), all distinct.
    counts = [len(enumerate_orderings(["Cu", "Au"], "fcc", n, n)) for n in (1, 2, 3, 4)]
    assert counts == [0, 2, 6, 19]
    structures = enumerate_orderings(["Cu", "Au"], "fcc", max_atoms=4)
    groups = StructureMatcher().group_structures(structures)
    assert len(groups) == len(structures) == 27
    compositions = {s.composition.reduced_formula for s in structures}
    assert {"CuAu", "Cu3Au", "CuAu3", "Cu2Au", "CuAu2"} <= compositions
    # L1_0 and L1_2 are among them.
    matcher = StructureMatcher()
    for name in ("L1_0", "L1_2"):
        proto = prototype(name)
        target = proto.copy()
        target.replace_species({"Xa": "Cu", "Xb": "Au"})
        assert any(matcher.fit(target, s) for s in structures), name


def test_ternary_fcc_enumeration_gives_over_a_thousand_candidates_quickly() -> None:
    structures = enumerate_orderings(["Cu", "Au", "Pd"], "fcc", max_atoms=6)
    assert len(structures) == 1078
    # Vegard's-law volumes: a Cu-Au structure lies between pure Cu and pure Au.
    cuau = next(s for s in structures if s.composition.reduced_formula == "CuAu")
    assert 11.8 < cuau.volume / len(cuau) < 17.0


#: Tolerances tight enough to tell orderings of one parent apart: with pymatgen's defaults
#: (stol 0.3) some distinct ternary hcp orderings, 0.22 apart, count as one (54 classes, not 57).
EXACT = StructureMatcher(ltol=0.02, stol=0.02, angle_tol=0.5)


def _hcp(a: float = 1.0) -> Structure:
    return Structure(
        Lattice.hexagonal(a, a * (8 / 3) ** 0.5), ["Cu", "Cu"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    )


def _hcp_by_brute_force(elements: list[str], max_cells: int) -> list[list[Structure]]:
    """Every labeling of every supercell (all HNFs, not only distinct ones) of up to
    ``max_cells`` primitive hcp cells, grouped by ``StructureMatcher``: an independent count."""
    parent = _hcp(2.7)
    made = []
    for n in range(1, max_cells + 1):
        for a, c, f in itertools.product(range(1, n + 1), repeat=3):
            if a * c * f != n:
                continue
            for b, d, e in itertools.product(range(c), range(f), range(f)):
                supercell = parent * np.array([[a, 0, 0], [b, c, 0], [d, e, f]]).T
                for labels in itertools.product(elements, repeat=len(supercell)):
                    made.append(Structure(supercell.lattice, list(labels), supercell.frac_coords))
    return EXACT.group_structures(made)


@pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")  # spglib, through pymatgen
def test_hcp_symmetry_operations_are_spglibs() -> None:
    # The operations the enumeration derives (lattice rotations that map the two-atom basis
    # onto itself, with their fractional translations) are P6_3/mmc's, as spglib finds them.
    vectors, basis = _PARENTS["hcp"], _BASES["hcp"]
    analyzer = SpacegroupAnalyzer(Structure(Lattice(vectors.T), ["Cu", "Cu"], basis))
    assert analyzer.get_space_group_symbol() == "P6_3/mmc"

    def key(rotation: np.ndarray, translation: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return tuple(np.round(rotation).astype(int).ravel()), tuple(np.round(np.mod(translation, 1), 6) % 1)

    spglib = {key(o.rotation_matrix, o.translation_vector) for o in analyzer.get_symmetry_operations()}
    derived = {key(r, t) for r, t in _space_group(vectors, basis)}
    assert len(derived) == 24 and derived == spglib


@pytest.mark.parametrize(("elements", "expected"), [(["Cu", "Au"], 13), (["Cu", "Au", "Pd"], 57)])
def test_hcp_enumeration_up_to_4_atoms_matches_a_brute_force_count(
    elements: list[str], expected: int
) -> None:
    structures = enumerate_orderings(elements, "hcp", max_atoms=4, min_species=1)
    groups = _hcp_by_brute_force(elements, max_cells=2)
    assert len(structures) == len(groups) == expected
    for group in groups:  # each brute-force class is one enumerated structure, and only one
        assert sum(EXACT.fit(group[0], s) for s in structures) == 1
    formulas = [s.composition.reduced_formula for s in structures]
    assert all(formulas.count(el) == 1 for el in elements)  # each pure element once


def test_hcp_orderings_are_distinct_have_their_composition_and_ideal_geometry() -> None:
    # Binary hcp orderings with 2, 4, 6, 8 atoms: 3, 10, 50, 270 (brute force over all 948 and
    # 9,908 labelings of cells of up to 6 and 8 atoms agrees: 63 and 333 classes, one to one).
    counts = [len(enumerate_orderings(["Cu", "Au"], "hcp", n, n, min_species=1)) for n in (2, 4, 6, 8)]
    assert counts == [3, 10, 50, 270]
    structures = enumerate_orderings(["Cu", "Au"], "hcp", max_atoms=6)
    assert len(structures) == 1 + 10 + 50
    assert all(
        len(s) in (2, 4, 6) and {el.symbol for el in s.composition} == {"Cu", "Au"} for s in structures
    )
    assert len(EXACT.group_structures(structures)) == len(structures)
    formulas = {s.composition.reduced_formula for s in structures}
    assert formulas == {"CuAu", "Cu3Au", "CuAu3", "Cu2Au", "CuAu2", "Cu5Au", "CuAu5"}
    cu_volume, au_volume = atomic_volume("Cu"), atomic_volume("Au")
    for s in structures:
        x_au = s.composition.get_atomic_fraction("Au")
        assert s.volume / len(s) == pytest.approx((1 - x_au) * cu_volume + x_au * au_volume)
        assert EXACT.fit(Structure(s.lattice, ["Cu"] * len(s), s.frac_coords), _hcp())  # ideal c/a
        # Ideal close packing: 12 nearest neighbours, as in fcc at the same volume per atom.
        nearest = (2**0.5 * s.volume / len(s)) ** (1 / 3)
        shells = s.get_all_neighbors(nearest * 1.01)
        assert all(len(shell) == 12 for shell in shells)
        assert np.allclose([n.nn_distance for shell in shells for n in shell], nearest)
    with pytest.raises(SpaceError, match="hcp has 2 atoms per primitive cell"):
        enumerate_orderings(["Cu", "Au"], "hcp", max_atoms=1)


def test_substitution_on_prototypes_is_deduplicated() -> None:
    made = substitute(
        {"L1_2": prototype("L1_2"), "L1_0": prototype("L1_0"), "A1": prototype("A1")}, ["Cu", "Au"]
    )
    formulas = sorted(s.composition.reduced_formula for _, s in made)
    # L1_0 CuAu and AuCu are the same structure; L1_2 gives Cu3Au and CuAu3; A1 gives the elements.
    assert formulas == sorted(["Au", "Cu", "Cu3Au", "CuAu3", "CuAu"])


def test_pool_features_and_encoding() -> None:
    pool = StructurePool.from_structures(enumerate_orderings(["Cu", "Au"], "fcc", max_atoms=3))
    assert len(pool) == len(pool.ids) == 8
    assert pool.X.shape == (8, len(pool.feature_names)) and pool.X.dtype == torch.double
    assert "x_Au" in pool.feature_names and "nn1_Au-Cu" in pool.feature_names
    # encode() of known candidates reads the same rows; of new ones, featurises them.
    assert torch.equal(pool.encode([pool.candidates[3].params]), pool.X[3:4])
    other = structure_to_params(enumerate_orderings(["Cu", "Au"], "fcc", max_atoms=4, min_atoms=4)[0])
    assert pool.encode([other]).shape == (1, len(pool.feature_names))
    # Pair fractions of each shell sum to one; element fractions too.
    names = pool.feature_names
    nn1 = [i for i, n in enumerate(names) if n.startswith("nn1_")]
    x = [i for i, n in enumerate(names) if n.startswith("x_")]
    assert torch.allclose(pool.X[:, nn1].sum(1), torch.ones(8, dtype=torch.double))
    assert torch.allclose(pool.X[:, x].sum(1), torch.ones(8, dtype=torch.double))


def test_featurizer_tells_orderings_apart() -> None:
    featurizer = StructureFeaturizer(["Cu", "Au"])
    structures = [
        s for s in enumerate_orderings(["Cu", "Au"], "fcc", 4) if s.composition.reduced_formula == "CuAu"
    ]
    X = featurizer.features(structures)
    assert len(np.unique(X.round(8), axis=0)) == len(structures)
    with pytest.raises(SpaceError, match=r"element\(s\) \['Pd'\] outside"):
        featurizer.features(enumerate_orderings(["Cu", "Pd"], "fcc", 2))


def test_pool_from_config_builds_caches_and_names_bad_keys(tmp_path: Path) -> None:
    data = {
        "campaign": {"name": "s", "ledger": "l.db"},
        "space": {
            "generator": {
                "type": "structures",
                "elements": ["Cu", "Au"],
                "max_atoms": 3,
                "cache": "cands.json",
            }
        },
        "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}],
        "oracle": {"type": "dft"},
        "stopping": {"max_experiments": 3},
    }
    config = parse_config(data, base_dir=tmp_path)
    assert config.space.generator is not None
    pool = pool_from_config(config.space.generator.options, config)
    assert (tmp_path / "cands.json").is_file()
    again = pool_from_config(config.space.generator.options, config)
    assert again.ids == pool.ids
    # A cache written before the structure form was canonical (no "form") is made again.
    cached = json.loads((tmp_path / "cands.json").read_text())
    old = {**cached, "form": None, "candidates": cached["candidates"][:1]}
    (tmp_path / "cands.json").write_text(json.dumps(old))
    assert pool_from_config(config.space.generator.options, config).ids == pool.ids
    assert json.loads((tmp_path / "cands.json").read_text())["form"] == 2
    hcp = pool_from_config({"elements": ["Cu", "Au"], "lattice": "hcp", "max_atoms": 4}, config)
    assert len(hcp) == 1 + 10 and {c.params["prototype"] for c in hcp.candidates} == {"hcp"}
    assert bool(hcp.X.isfinite().all())
    with pytest.raises(ConfigError, match=r"space.generator.lattice: Input should be 'fcc', 'bcc' or 'hcp'"):
        pool_from_config({"elements": ["Cu", "Au"], "lattice": "hex"}, config)
    with pytest.raises(ConfigError, match=r"space.generator: hcp has 2 atoms per primitive cell"):
        pool_from_config({"elements": ["Cu", "Au"], "lattice": "hcp", "max_atoms": 1}, config)
    with pytest.raises(ConfigError, match=r"space.generator.max_atom: unknown key"):
        pool_from_config({"elements": ["Cu"], "max_atom": 3}, config)
    with pytest.raises(ConfigError, match=r"space.generator.elements"):
        pool_from_config({"elements": ["Cu", "Xx"]}, config)
    with pytest.raises(ConfigError, match=r"space.generator.min_atoms: must not exceed max_atoms"):
        pool_from_config({"elements": ["Cu", "Au"], "min_atoms": 4, "max_atoms": 2}, config)


def test_the_alloy_example_pool_keeps_its_candidate_ids() -> None:
    # The 1,078 fcc Cu-Au-Pd orderings of examples/alloy_discovery, ids in the canonical form
    # (no -0.0, fractional coordinates in [0, 1)) that float noise cannot move: a campaign
    # resumed on another machine finds its candidates again. (Ledgers written before the form
    # was canonical find theirs through StructurePool.row_of.)
    options = StructureSpaceOptions.model_validate(
        {"elements": ["Cu", "Au", "Pd"], "lattice": "fcc", "max_atoms": 6}
    )
    ids = generate(options).ids
    assert len(ids) == 1078
    assert hashlib.sha256("".join(ids).encode()).hexdigest()[:16] == "05ab43d1dd7d9c6b"


def test_several_parent_lattices_and_prototypes_from_config(tmp_path: Path) -> None:
    config = parse_config(
        {
            "campaign": {"name": "s", "ledger": "l.db"},
            "space": {"generator": {"type": "structures", "elements": ["Cu", "Au"]}},
            "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize"}],
            "oracle": {"type": "dft"},
            "stopping": {"max_experiments": 3},
        },
        base_dir=tmp_path,
    )
    both = pool_from_config({"elements": ["Cu", "Au"], "lattice": ["fcc", "bcc"], "max_atoms": 3}, config)
    assert [c.params["prototype"] for c in both.candidates] == ["fcc"] * 8 + ["bcc"] * 8
    only = pool_from_config({"elements": ["Cu", "Au"], "lattice": None, "prototypes": ["B2", "C15"]}, config)
    assert sorted(c.params["formula"] for c in only.candidates) == ["Cu2Au", "CuAu", "CuAu2"]
    with pytest.raises(ConfigError, match=r"space.generator.lattice: a parent lattice is named twice"):
        pool_from_config({"elements": ["Cu", "Au"], "lattice": ["fcc", "fcc"]}, config)
    with pytest.raises(
        ConfigError, match=r"space.generator.lattice: Input should be 'fcc', 'bcc' or 'hcp', got 'sc'"
    ):
        pool_from_config({"elements": ["Cu", "Au"], "lattice": ["fcc", "sc"]}, config)
    with pytest.raises(ConfigError, match=r"space.generator: unknown prototype 'Q9'; built-in: \['A1'"):
        pool_from_config({"elements": ["Cu", "Au"], "prototypes": ["Q9"]}, config)
    with pytest.raises(ConfigError, match=r"space.generator: the structure generator made no candidates"):
        pool_from_config({"elements": ["Cu"], "lattice": []}, config)
