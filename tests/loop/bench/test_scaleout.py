"""``alloop bench scaleout`` on the tests' local Slurm, with a small N."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.bench.cli import app
from loop.bench.scaleout import run_scaleout
from tests.slurm.cluster import LocalSlurm
from tests.slurm.fixture import slurm

__all__ = ["slurm"]

pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed: pip install -e '.[slurm]'")


@pytest.mark.slow
def test_scaleout_loses_nothing_duplicates_nothing_and_matches_the_in_process_ledger(
    slurm: LocalSlurm, prefect_server: str, tmp_path: Path
) -> None:
    # The flow runs against the session's Prefect test server, not an ephemeral one of its own
    # (whose start-up timed out once on a loaded machine).
    result = run_scaleout(n=24, max_jobs=2, per_task=4, batch_size=12, workdir=tmp_path)

    json.dumps(result)  # what --json prints
    assert result["done"] == 24 and result["lost"] == 0 and result["duplicated"] == 0
    assert result["identical_to_in_process"] is True
    assert result["evaluations_per_minute"] > 0 and result["jobs"], "workers ran as Slurm jobs"
    assert (tmp_path / "logs").is_dir() and any((tmp_path / "logs").glob("dask-worker-*.err"))


def test_scaleout_without_slurm_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    outcome = CliRunner().invoke(app, ["scaleout", "--n", "2"])
    assert outcome.exit_code == 2
    assert "sbatch is not on PATH" in outcome.output
