"""The GPAW example: real DFT from the structure CHGNet pre-relaxed, against DFT from the
candidate as generated (a 2-relaxation version of `alloop bench prerelax --calculator gpaw`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from loop.bench.prerelax import pick_candidates, run
from loop.build import build_oracle
from loop.config import load_config
from oracles.dft import DFTRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpaw_prerelax" / "campaign.toml"

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("gpaw") is None,
        reason="GPAW is not installed (pip install gpaw gpaw-data; see .ci/run)",
    ),
    pytest.mark.skipif(importlib.util.find_spec("chgnet") is None, reason="CHGNet is not installed"),
]


def test_the_example_builds_a_gpaw_oracle_that_pre_relaxes_with_chgnet() -> None:
    config = load_config(EXAMPLE)
    oracle = build_oracle(config, None)
    assert isinstance(oracle, DFTRunner) and oracle.settings.calculator.name == "gpaw"
    assert oracle.prerelaxation is not None and oracle.prerelaxation.name == "chgnet"
    assert config.surrogate.type == "committee" and config.stopping.max_experiments <= 20


def test_gpaw_from_the_chgnet_structure_takes_fewer_ionic_steps_to_the_same_minimum(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    oracle = build_oracle(config, None)
    assert isinstance(oracle, DFTRunner) and oracle.prerelaxation is not None
    candidate = pick_candidates(["Cu", "Au"], 2, 1, 0.0, seed=0)[0]  # a 2-atom CuAu ordering
    result = run([candidate], oracle.settings, oracle.prerelaxation, tmp_path, wall_time_s=900)

    row = result["rows"][0]
    plain, pre = row["plain"], row["prerelaxed"]
    assert "failed" not in plain and "failed" not in pre, row
    assert pre["prerelax"]["model"] == "chgnet" and pre["prerelax"]["used"] and pre["prerelax"]["steps"] > 0
    assert pre["dft_steps"] < plain["dft_steps"]
    assert abs(pre["energy_per_atom"] - plain["energy_per_atom"]) < 5e-3  # eV/atom: the same minimum
    assert result["summary"]["n_compared"] == 1
