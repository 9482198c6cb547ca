"""`alloop bench prerelax`: both arms per candidate, and a summary that adds them up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase.calculators.emt import EMT
from typer.testing import CliRunner

from loop.bench.cli import app
from loop.bench.prerelax import pick_candidates, run
from oracles.dft_job import JobSettings
from oracles.prerelax import PreRelaxation


def test_pre_relaxing_with_the_dft_potential_itself_saves_steps_and_finds_the_same_minimum(
    tmp_path: Path,
) -> None:
    candidates = pick_candidates(["Cu", "Au"], 3, 4, 0.1, seed=0)
    assert len({c.id for c in candidates}) == 4
    result = run(candidates, JobSettings(), PreRelaxation(EMT(), "emt", fmax_ev_per_a=0.05), tmp_path)

    summary = result["summary"]
    assert summary["n_compared"] == 4 and summary["n_failed"] == 0
    assert summary["dft_steps_prerelaxed"]["sum"] < summary["dft_steps_plain"]["sum"]
    assert summary["fewer_dft_steps"] + summary["more_dft_steps"] <= 4
    assert summary["different_minimum_over_5_mev"] == 0
    assert len(list(tmp_path.glob("references-*.json"))) == 1  # references once, for both arms


def test_the_command_prints_json_with_its_rows(tmp_path: Path) -> None:
    pytest.importorskip("chgnet", reason="CHGNet is not installed")
    out = CliRunner().invoke(app, ["prerelax", "--candidates", "1", "--workdir", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert len(result["rows"]) == 1 and result["rows"][0]["prerelaxed"]["prerelax"]["model"] == "chgnet"
    assert result["summary"]["n_compared"] == 1 and result["command"].startswith("alloop bench prerelax")
