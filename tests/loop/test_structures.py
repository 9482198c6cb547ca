"""Structure spaces: enumeration, substitution, the pool and its configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher

from loop.config import parse_config
from loop.errors import ConfigError, SpaceError
from loop.featurize import StructureFeaturizer
from loop.space import Candidate
from loop.structures import (
    StructurePool,
    enumerate_orderings,
    pool_from_config,
    prototype,
    structure_from_params,
    structure_to_params,
    substitute,
)


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


def test_substitution_on_prototypes_is_deduplicated() -> None:
    made = substitute(
        {"L1_2": prototype("L1_2"), "L1_0": prototype("L1_0"), "A1": prototype("A1")}, ["Cu", "Au"]
    )
    formulas = sorted(s.composition.reduced_formula for _, s in made)
    # L1_0 CuAu and AuCu are the same structure; L1_2 gives Cu3Au and CuAu3; A1 gives the elements.
    assert formulas == sorted(["Au", "Cu", "Cu3Au", "CuAu3", "CuAu"])


def test_candidate_carries_its_structure_and_a_stable_id() -> None:
    structure = enumerate_orderings(["Cu", "Pd"], "fcc", max_atoms=2)[0]
    params = structure_to_params(structure, "fcc")
    back = structure_from_params(params)
    assert StructureMatcher().fit(structure, back)
    assert np.allclose(back.lattice.matrix, structure.lattice.matrix, atol=1e-5)
    assert Candidate(params).id == Candidate(structure_to_params(back, "fcc")).id
    with pytest.raises(SpaceError, match=r"carry no 'structure'"):
        structure_from_params({"formula": "CuPd"})
    with pytest.raises(SpaceError, match=r"not a valid compact structure"):
        structure_from_params({"structure": "{not json"})


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
    with pytest.raises(ConfigError, match=r"space.generator.max_atom: unknown key"):
        pool_from_config({"elements": ["Cu"], "max_atom": 3}, config)
    with pytest.raises(ConfigError, match=r"space.generator.elements"):
        pool_from_config({"elements": ["Cu", "Xx"]}, config)
    with pytest.raises(ConfigError, match=r"space.generator.min_atoms: must not exceed max_atoms"):
        pool_from_config({"elements": ["Cu", "Au"], "min_atoms": 4, "max_atoms": 2}, config)
