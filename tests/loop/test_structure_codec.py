"""The compact structure form candidates carry: round trip, stable ids, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from loop.candidate import Candidate
from loop.errors import SpaceError
from loop.orderings import enumerate_orderings
from loop.structure_codec import structure_from_params, structure_to_params


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


def test_the_codec_and_the_dft_oracle_import_without_torch() -> None:
    code = "import sys, loop.structure_codec, oracles.dft; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
