"""The ledger's schema version: a new ledger is current, an old one is migrated keeping every
row, a newer one is refused."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from loop.errors import LedgerError
from loop.ledger import Ledger
from loop.schema import MIGRATIONS, SCHEMA_VERSION, metadata_obj, schema

V1_SQL = Path(__file__).with_name("ledger_v1.sql")  # the tables as alloop 2317036 created them

T = "2025-01-02 03:04:05.000000"
CELL = [[3.6, 0.0, 0.0], [0.0, 3.6, 0.0], [0.0, 0.0, 3.6]]
STRUCTURE = {"cell": CELL, "symbols": ["Cu"], "positions": [[0.0, 0.0, 0.0]], "pbc": [True, True, True]}
LABELS = {"energy_ev": -0.5, "forces_ev_per_a": [[0.1, 0.0, -0.1]], "stress_ev_per_a3": [0.01, 0, 0, 0, 0, 0]}
# What the DFT runner wrote before results were typed: the labelled structure in the metadata.
DFT_METADATA = {"formula": "Cu", "structure": STRUCTURE, **LABELS, "n_steps": 3}
# Keys that make no frame (forces of the wrong shape): the row keeps them.
BAD_METADATA = {"structure": STRUCTURE, "energy_ev": 1.0, "forces_ev_per_a": [[0.0, 0.0]]}
ROWS = {
    "campaigns": [
        (1, "old", '{"objectives": [{"name": "y"}]}', "abc", 7, '{"python": "3.11"}', T),
        (2, "stopped", '{"objectives": [{"name": "y"}]}', "def", 1, "{}", T),
    ],
    "runs": [(1, 1, 7, "abc", "{}", "host", 11, T), (2, 2, 1, "def", "{}", "host", 12, T)],
    "candidates": [
        (1, "c1", '{"x": 0.5}', 1, T),
        (1, "c2", '{"x": 0.7}', 1, T),
        (2, "c1", '{"x": 1}', 2, T),
        (2, "c2", '{"x": 2}', 2, T),
        (2, "c3", '{"x": 3}', 2, T),
    ],
    "evaluations": [
        (1, 1, "c1", 0, "done", None, 1.0, None, None, 1, T, T, T, '{"note": "ok"}'),
        (2, 1, "c2", 0, "failed", "job-2", None, "boom", 1, 1, T, T, T, None),
        (3, 2, "c1", 0, "submitted", "job-3", None, None, None, 2, T, T, None, None),
        (4, 2, "c2", 0, "done", None, 1.0, None, None, 2, T, T, T, json.dumps(DFT_METADATA)),
        (5, 2, "c3", 0, "done", None, 1.0, None, None, 2, T, T, T, json.dumps(BAD_METADATA)),
    ],
    "results": [(1, "y", 0.25, 0.01, "eV", 1, T), (4, "y", -0.5, None, "eV/atom", 2, T)],
    "cycles": [
        (1, 0, "closed", "qlognei", "{}", "[]", None, 1, T, T),
        (2, 0, "closed", "random", None, "[]", "the candidate pool is exhausted", 2, T, T),
    ],
    "flow_leases": [("old", "h", "flow run x", "host", 11, 1.0, 2.0)],
}


def _old_ledger(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SQL.read_text())
        for table, rows in ROWS.items():
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


def _v2_ledger(path: Path) -> None:
    """The v1 ledger taken to version 2 as alloop before typed results left it."""
    _old_ledger(path)
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        MIGRATIONS[1](conn)
        tables = [metadata_obj.tables[name] for name in ("leases", "schema")]
        metadata_obj.create_all(conn, tables=tables)
        conn.execute(insert(schema).values(version=2))
    engine.dispose()


def _assert_frames_moved(path: Path) -> None:
    """The labelled structure of evaluation 4 is in ``evaluations.frame``, out of its metadata;
    every other column of every evaluation is as it was."""
    width = len(ROWS["evaluations"][0])
    assert [r[: width - 1] for r in _rows(path, "evaluations", width)] == [
        r[: width - 1] for r in ROWS["evaluations"]
    ]
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT id, metadata, frame FROM evaluations ORDER BY id").fetchall()
    metadata = {i: None if m is None else json.loads(m) for i, m, _ in stored}
    frames = {i: None if f is None else json.loads(f) for i, _, f in stored}
    kept = {"formula": "Cu", "n_steps": 3}
    assert metadata == {1: {"note": "ok"}, 2: None, 3: None, 4: kept, 5: BAD_METADATA}
    assert frames == {1: None, 2: None, 3: None, 4: {"id": "c2", "structure": STRUCTURE, **LABELS}, 5: None}
    with Ledger(path) as ledger:
        moved, bad = ledger.evaluations(2, ["done"])
    assert moved.metadata == kept and moved.frame is not None
    assert moved.frame.id == "c2" and moved.frame.energy == -0.5
    assert moved.frame.forces.tolist() == LABELS["forces_ev_per_a"]
    assert moved.frame.stress is not None and moved.frame.stress.tolist() == LABELS["stress_ev_per_a3"]
    assert moved.frame.cell.tolist() == CELL and moved.frame.numbers.tolist() == [29]
    assert bad.frame is None and bad.metadata == BAD_METADATA


def _rows(path: Path, table: str, width: int) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return [row[:width] for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]


def _version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT version FROM schema").fetchone()[0])


def test_a_new_ledger_is_current(tmp_path: Path) -> None:
    Ledger(tmp_path / "new.db").close()
    assert _version(tmp_path / "new.db") == SCHEMA_VERSION


def test_an_old_ledger_is_migrated_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _old_ledger(path)

    with Ledger(path) as ledger:
        assert ledger.campaign_names() == ["old", "stopped"]
        (done,) = ledger.evaluations(1, ["done"])
        assert done.values == {"y": 0.25} and done.metadata == {"note": "ok"}
        assert ledger.status_counts(2)["submitted"] == 1

    assert _version(path) == SCHEMA_VERSION
    for table, rows in ROWS.items():
        if table not in ("flow_leases", "evaluations"):  # leases are renewed every minute: the old table goes
            assert _rows(path, table, len(rows[0])) == rows, table
    _assert_frames_moved(path)
    with sqlite3.connect(path) as conn:
        stops = conn.execute("SELECT name, stop_reason FROM campaigns ORDER BY id").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert stops == [("old", None), ("stopped", "the candidate pool is exhausted")]
    assert "flow_leases" not in tables and {"leases", "schema"} <= tables
    Ledger(path).close()  # opening a current ledger again changes nothing
    assert _version(path) == SCHEMA_VERSION and _rows(path, "runs", 8) == ROWS["runs"]


def test_a_v2_ledger_moves_its_labelled_structures_into_frames(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    _v2_ledger(path)
    assert _version(path) == 2
    Ledger(path).close()
    assert _version(path) == SCHEMA_VERSION
    for table, rows in ROWS.items():
        if table not in ("flow_leases", "evaluations"):
            assert _rows(path, table, len(rows[0])) == rows, table
    _assert_frames_moved(path)


def test_a_failed_migration_leaves_the_old_ledger_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _old_ledger(path)
    with sqlite3.connect(path) as conn:  # a column the migration adds: it fails half-way
        conn.execute("ALTER TABLE campaigns ADD COLUMN stopped_at TEXT")
    with pytest.raises(LedgerError, match=r"v1\.db"):
        Ledger(path)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = [r[1] for r in conn.execute("PRAGMA table_info(campaigns)")]
    assert "schema" not in tables and "flow_leases" in tables and "stop_reason" not in columns


def test_a_newer_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    Ledger(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Ledger(path)
