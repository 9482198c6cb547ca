"""The README's example: the thin-film campaign against the function-backed simulated lab."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from loop.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simulated_lab" / "campaign.toml"


def test_example_runs_resumes_and_reports(tmp_path: Path) -> None:
    config = tmp_path / "campaign.toml"
    shutil.copy(EXAMPLE, config)  # its ledger path is relative: the ledger lands in tmp_path
    runner = CliRunner()

    first = runner.invoke(app, ["run", str(config), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "budget spent: 30 of 30 experiments" in first.output

    status = json.loads(runner.invoke(app, ["status", str(tmp_path / "campaign.db"), "--json"]).output)
    assert status["campaign"] == "thin-film-conductivity"
    counts = status["evaluations"]
    assert counts["done"] + counts["failed"] == 30 and counts["proposed"] == counts["submitted"] == 0
    params = status["best"]["params"]
    assert abs(params["x_cu"] + params["x_ag"] + params["x_au"] - 1.0) < 1e-6
    assert params["atmosphere"] in {"air", "N2", "Ar"} and isinstance(params["anneal_min"], int)
    # The emulator's optimum is ~5.3 (1e5 S/cm); random designs rarely pass 1.
    assert status["best"]["values"]["conductivity"] > 2.0

    second = runner.invoke(app, ["run", str(config), "--quiet"])
    assert second.exit_code == 0, second.output
    assert "0 cycle(s) run" in second.output
    again = json.loads(runner.invoke(app, ["status", str(tmp_path / "campaign.db"), "--json"]).output)
    assert again["evaluations"] == counts and again["cycles"] == status["cycles"]
