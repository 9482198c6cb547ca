"""The compact structure form candidates carry: round trip, stable ids, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from loop.candidate import Candidate
from loop.errors import SpaceError
from loop.orderings import enumerate_orderings
from loop.structure_codec import canonical_params, structure_from_params, structure_to_params


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


def test_noise_in_the_last_bits_does_not_change_a_candidates_id() -> None:
    # Another CPU, numpy or pymatgen computes the same structure up to ~1e-13; its id must not
    # move (before the form was canonical, 1,064 of the 1,078 Cu-Au-Pd orderings' ids did).
    rng = np.random.default_rng(0)
    structures = enumerate_orderings(["Cu", "Au", "Pd"], "fcc", max_atoms=4)
    for structure in structures:
        noisy = Structure(
            Lattice(structure.lattice.matrix + rng.normal(scale=1e-13, size=(3, 3))),
            structure.species,
            structure.frac_coords + rng.normal(scale=1e-13, size=structure.frac_coords.shape),
        )
        params = structure_to_params(structure)
        assert Candidate(structure_to_params(noisy)).id == Candidate(params).id
        body = json.loads(str(params["structure"]))
        assert "-0.0" not in str(params["structure"])
        assert all(0.0 <= x < 1.0 for row in body["frac_coords"] for x in row)


def test_parameters_in_the_old_form_re_encode_to_the_canonical_candidate() -> None:
    structure = enumerate_orderings(["Cu", "Au"], "fcc", max_atoms=2, min_atoms=2)[0]
    params = structure_to_params(structure, "fcc")
    body = json.loads(str(params["structure"]))
    body["frac_coords"][0] = [1.0 if x == 0.0 else x for x in body["frac_coords"][0]]
    body["lattice"] = [[-0.0 if x == 0.0 else x for x in row] for row in body["lattice"]]
    old = {**params, "structure": json.dumps(body, separators=(",", ":"))}
    assert Candidate(old).id != Candidate(params).id
    assert Candidate(canonical_params(old)).id == Candidate(params).id
    assert canonical_params(params) == params
    with pytest.raises(SpaceError, match=r"not a valid compact structure"):
        canonical_params({"structure": "[]"})


def test_the_codec_and_the_dft_oracle_import_without_torch() -> None:
    code = "import sys, loop.structure_codec, oracles.dft; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
