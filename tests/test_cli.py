"""The ``alloop`` command line: run, resume, status, export, and bad input."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from loop.cli import app
from loop.errors import LedgerError

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "status", "export", "bench"):
        assert command in result.output


def test_run_status_resume_export(branin_config: Callable[..., Path], tmp_path: Path) -> None:
    path = branin_config(max_experiments=8)
    first = runner.invoke(app, ["run", str(path), "--max-cycles", "2", "--quiet"])
    assert first.exit_code == 0, first.output
    db = tmp_path / "ledger.db"

    status = runner.invoke(app, ["status", str(db), "--json"])
    assert status.exit_code == 0, status.output
    summary = json.loads(status.output)
    assert summary["campaign"] == "branin"
    assert summary["cycles"] == 2
    assert summary["evaluations"] == {"proposed": 0, "submitted": 0, "done": 6, "failed": 0}
    assert summary["best"]["values"]["y"] > 0
    calibration = summary["calibration"]
    assert (calibration["method"], calibration["applies_to"]) == ("scale", "stopping")  # the default
    assert calibration["objectives"]["y"]["predictive"]["count"] == 2
    assert calibration["loo"]["y"]["count"] == 4
    text = runner.invoke(app, ["status", str(db)])
    assert text.exit_code == 0 and "calibration y" in text.output
    assert "stopping rules use" in text.output and "acquisition uses" in text.output

    second = runner.invoke(app, ["run", str(path), "--quiet"])
    assert second.exit_code == 0, second.output
    assert "budget spent: 8 of 8 experiments" in second.output

    exported = runner.invoke(app, ["export", str(db), "--format", "csv"])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    assert len(rows) == 8 and len({r["candidate_id"] for r in rows}) == 8
    assert {"x1", "x2", "y", "y_uncertainty", "status", "cycle"} <= set(rows[0])
    assert all(r["status"] == "done" for r in rows)


def test_db_option_overrides_the_ledger(branin_config: Callable[..., Path], tmp_path: Path) -> None:
    path = branin_config(max_experiments=4)
    result = runner.invoke(app, ["run", str(path), "--db", str(tmp_path / "other.db"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other.db").exists() and not (tmp_path / "ledger.db").exists()


def test_unknown_key_is_named_and_nothing_is_written(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = branin_config()
    path.write_text(path.read_text().replace("[acquisition]", "[acquisition]\nbetta = 2.0"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "acquisition.betta: unknown key" in result.output
    assert not (tmp_path / "ledger.db").exists()


def test_out_of_bounds_value_is_named(branin_config: Callable[..., Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(branin_config(batch_size=0))])
    assert result.exit_code == 2
    assert "acquisition.batch_size" in result.output and "greater than or equal to 1" in result.output
    assert not (tmp_path / "ledger.db").exists()


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(
        """
[campaign]
name = "missing"
[space.pool]
path = "nowhere.csv"
inputs = ["a"]
[[objectives]]
name = "y"
[oracle]
type = "dataset"
path = "nowhere.csv"
[stopping]
max_experiments = 3
"""
    )
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "space.pool.path" in result.output and "nowhere.csv" in result.output
    assert "does not exist" in result.output
    assert not (tmp_path / "campaign.db").exists()


def test_status_of_a_missing_ledger(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", str(tmp_path / "nope.db")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "nope.db").exists()


def test_the_loop_never_imports_prefect() -> None:
    import subprocess
    import sys

    code = (
        "import sys, loop.cli, loop.campaign, loop.ledger, oracles, surrogates; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder no ledger can be created in: a read-only one, or ``/proc`` for root."""
    if os.geteuid() == 0:  # root writes through mode bits
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_bad_ledgers_exit_2_with_one_line_naming_the_path(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all " * 200)
    before = corrupt.read_bytes()
    path = branin_config()
    read_only = _read_only_folder(tmp_path) / "ledger.db"
    missing = tmp_path / "no-such-folder" / "ledger.db"
    cases = {
        str(corrupt): "not a SQLite database",
        str(read_only): "cannot open or create it",
        str(missing): "does not exist",
    }
    for db, reason in cases.items():
        result = runner.invoke(app, ["run", str(path), "--db", db, "-q"])
        assert result.exit_code == 2, (db, result.output)
        line = _one_line(result.output)
        assert db in line and reason in line, line
    for db, reason in [(str(corrupt), "not a SQLite database"), (str(missing), "does not exist")]:
        result = runner.invoke(app, ["status", db])
        assert result.exit_code == 2, result.output
        line = _one_line(result.output)
        assert db in line and reason in line, line
    assert corrupt.read_bytes() == before, "nothing written to the corrupt file"
    assert not read_only.exists() and not missing.parent.exists()
    assert not (tmp_path / "ledger.db").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all " * 200)
    result = runner.invoke(app, ["--debug", "status", str(corrupt)])
    assert result.exit_code == 1 and isinstance(result.exception, LedgerError)


def _runs(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_stop_reason_is_stored_and_shown_and_a_no_op_resume_adds_no_run(
    branin_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = branin_config(max_experiments=4)
    db = tmp_path / "ledger.db"
    first = runner.invoke(app, ["run", str(path), "-q"])
    assert first.exit_code == 0, first.output
    summary = json.loads(runner.invoke(app, ["status", str(db), "--json"]).output)
    assert summary["stop_reason"] == "budget spent: 4 of 4 experiments"
    best_y = summary["best"]["values"]["y"]
    assert best_y > 0  # Branin is minimised: its values are positive, in their own sign
    best_line = next(line for line in first.output.splitlines() if line.startswith("best:"))
    assert best_line.startswith(f"best: y = {best_y:.4g} (x1 = ") and "{" not in best_line
    assert "candidate " in best_line and "cycle " in best_line
    table = runner.invoke(app, ["status", str(db)])
    assert "budget spent: 4 of 4 experiments" in table.output
    assert _runs(db) == 1

    again = runner.invoke(app, ["run", str(path), "-q"])
    assert again.exit_code == 0 and "0 cycle(s) run" in again.output
    assert _runs(db) == 1, "a resume with nothing to do registers no run"

    more = branin_config(max_experiments=6)  # the budget may grow on resume: it goes on
    assert runner.invoke(app, ["run", str(more), "-q"]).exit_code == 0
    assert _runs(db) == 2
    summary = json.loads(runner.invoke(app, ["status", str(db), "--json"]).output)
    assert summary["stop_reason"] == "budget spent: 6 of 6 experiments"


def test_the_cli_imports_nothing_from_flows() -> None:
    """``alloop deploy`` is registered by flows/ (entry-point group ``alloop.commands``)."""
    import ast
    import tomllib

    import loop.cli

    tree = ast.parse(Path(loop.cli.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.split(".")[0] == "flows"]
    pyproject = tomllib.loads((Path(loop.cli.__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["alloop.commands"]["deploy"] == "flows.cli:deploy"
